"""The duty room's page on the web port: live alerts, stations, silences, history and
dead letters, with acknowledge, close and silence actions.

The page is plain HTML, CSS and JavaScript served as package data (no build step, no
network: an edge box has no internet). It reads and acts through the same REST API as
``vigil alerts`` (``engine.runtime.dispatch.api``), the dead-letter counts of
``/vigil/status`` (every 10 s) and two routes of its own:

    GET /console                  the page (a shell without data: no token needed)
    GET /console/{file}           its script, style sheet and translations
    GET /api/stations             the registry's stations, each with its worst active
                                  level, the silence covering it now, its QC state and
                                  each metric's last reading (``board``); a station with
                                  an active alert also its metrics' traces (sparklines)
    GET /api/stream               server-sent events: ``change`` with the dispatcher
                                  state's version whenever it is stored anew;
                                  ``readings`` with the board's version when it took
                                  readings since the last event, at most one per
                                  ``READINGS_EVERY_S``; a comment line every 15 s to keep
                                  proxies from closing it

The page reloads what it shows on each ``change`` (an alert stored is on the page in
well under a second; changes that come during a reload make one more, not one each),
and its station table and sparklines on each ``readings``: a new reading is on the page
within a second, also when it changes no alert.
Access is the web port's one rule (``engine.runtime.web_access``): the page and its files
are open, ``/api/`` routes need what the API needs (loopback, or the bearer token that the
page asks for once and keeps in the tab's session storage). On a Kafka worker that does
not own the dispatcher the two ``/api/`` routes are passed on to the one that does, whose
board merges every worker's (``engine.runtime.dispatch.board_cluster``): the stations of
every partition, whichever worker evaluates it, and ``readings`` when any of them moves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import resources
from typing import Any

from aiohttp import web

from engine.contracts.alerts import Level
from engine.contracts.batch import Quality
from engine.runtime.dispatch.api import Handler, error_response, json_number
from engine.runtime.dispatch.board import StationBoard
from engine.runtime.dispatch.board_cluster import ClusterBoard, Reading
from engine.runtime.dispatch.service import DispatchService
from rules.station import Station

__all__ = ["install_console"]

#: Seconds between keep-alive comments on an idle stream.
KEEPALIVE_S = 15.0
#: Least seconds between two ``readings`` events of one stream: in a storm readings come
#: all the time, and each event costs the page a reload of its station table.
READINGS_EVERY_S = 0.5

_FILES = {
    "console.js": "application/javascript",
    "console.css": "text/css",
    "i18n.json": "application/json",
}


def _asset(name: str) -> bytes:
    return (resources.files(__package__) / "console" / name).read_bytes()


Board = StationBoard | ClusterBoard


def station_rows(
    stations: Iterable[Station], service: DispatchService, board: Board | None = None
) -> list[dict[str, Any]]:
    """One row per station: registry facts, worst active level, the silence covering it
    and, from ``board``, each metric's last reading and QC state, and ``stale``: whether
    those came from a Kafka worker that did not answer (``board_cluster``); the
    stations with an active alert also get each metric's trace (``spark``)."""
    worst: dict[str, int] = {}
    health: dict[str, set[str]] = {}
    for state, _hidden in service.dispatcher.alerts():
        e = state.event
        if state.active:  # firing or acknowledged (a latched red included)
            worst[e.station] = max(worst.get(e.station, 0), int(state.level))
            kind = e.labels.get("health")
            if kind:  # a QC or silence alert (``<rule>#qc``, ``<rule>#silent``)
                health.setdefault(e.station, set()).add(kind)
    now = service.clock.now_ms()
    rows = []
    for s in stations:
        labels = {"station": s.id, "kind": s.kind}
        labels.update({k: v for k, v in (("basin", s.basin), ("district", s.district)) if v})
        readings = board.of(s.id) if board is not None else {}
        alerting = s.id in worst
        rows.append(
            {
                "id": s.id, "name": s.name, "kind": s.kind, "basin": s.basin,
                "district": s.district, "units": dict(s.metrics), "tz": getattr(s, "tz", None),
                "level": Level(worst.get(s.id, 0)).label,
                "silenced": service.dispatcher.silences.silencing(labels, now),
                "qc": _qc_state(readings, health.get(s.id, set())),
                "stale": board is not None and board.stale(s.id),
                "readings": {
                    m: {"value": json_number(r.value), "ts": r.ts,
                        "quality": Quality(r.quality).name.lower() if r.quality in _QUALITIES
                        else str(r.quality)}
                    for m, r in readings.items()
                },
                "spark": {
                    m: [[t, json_number(v)] for t, v in r.trace(board.bucket_ms)]
                    for m, r in readings.items()
                } if alerting and board is not None else {},
            }
        )  # fmt: skip
    return rows


_QUALITIES = {int(q) for q in Quality}


def _qc_state(readings: Mapping[str, Reading], health: set[str]) -> str:
    """``silent`` or ``qc`` while such a health alert is active, else the worst flag
    of the last readings (``fail``, ``suspect``), ``ok`` or ``unknown`` (none yet)."""
    for kind in ("silent", "qc"):
        if kind in health:
            return kind
    flags = {r.quality for r in readings.values()}
    if Quality.FAIL in flags:
        return "fail"
    if Quality.SUSPECT in flags:
        return "suspect"
    return "ok" if readings else "unknown"


def install_console(
    router: web.UrlDispatcher,
    source: DispatchService | Callable[[], DispatchService | None],
    stations: Callable[[], Iterable[Station]],
    *,
    board: Board | None = None,
    forward: Handler | None = None,
    forward_stream: Handler | None = None,
) -> None:
    """Add the page and its two API routes to ``router`` (the gateway's aiohttp app).

        ``source`` as for ``install_api``: the service, or a function giving the one running
        now (a Kafka worker's, None while another worker owns the dispatcher: then
        ``/api/stations`` goes to ``forward`` and ``/api/stream`` to ``forward_stream``, or
        they are answered 503). ``board``: the station board (last readings): this process's,
    or on a Kafka worker every worker's merged (``board_cluster``)."""

    def current() -> DispatchService | None:
        return source if isinstance(source, DispatchService) else source()

    def elsewhere(request: web.Request, to: Handler | None) -> Awaitable[web.StreamResponse]:
        if to is not None:
            return to(request)
        return _unavailable()

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=_asset("index.html"), content_type="text/html", charset="utf-8")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _FILES:
            raise web.HTTPNotFound()
        return web.Response(body=_asset(name), content_type=_FILES[name], charset="utf-8")

    async def station_list(request: web.Request) -> web.StreamResponse:
        service = current()
        if service is None:
            return await elsewhere(request, forward)
        if isinstance(board, ClusterBoard):
            await board.refresh()
        return web.json_response({"stations": station_rows(stations(), service, board)})

    async def stream(request: web.Request) -> web.StreamResponse:
        service = current()
        if service is None:
            return await elsewhere(request, forward_stream)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        version, seen = service.version, _version(board)
        await response.write(f"retry: 1000\nevent: change\ndata: {version}\n\n".encode())
        quiet_until = 0.0  # loop time before which no ``readings`` event is sent
        # Until this process stops running the dispatcher (a Kafka worker's ownership
        # moved): then the stream ends and the page reconnects, to the new owner.
        while current() is service:
            now, taken = await _changes(service, version, board, seen, quiet_until)
            if now != version:  # the page reloads everything, its stations included
                version, seen = now, taken
                await response.write(f"event: change\ndata: {version}\n\n".encode())
            elif taken != seen and loop.time() >= quiet_until:
                seen, quiet_until = taken, loop.time() + READINGS_EVERY_S
                await response.write(f"event: readings\ndata: {seen}\n\n".encode())
            elif taken == seen:
                await response.write(b": keep-alive\n\n")
        return response

    router.add_route("GET", "/console", page)
    router.add_route("GET", "/console/{name}", asset)
    router.add_route("GET", "/api/stations", station_list)
    router.add_route("GET", "/api/stream", stream)


def _version(board: Board | None) -> int:
    return 0 if board is None else board.version


async def _changes(
    service: DispatchService,
    version: int,
    board: Board | None,
    seen: int,
    quiet_until: float,
) -> tuple[int, int]:
    """The dispatcher state's and the board's versions once either moved on from
    ``version`` and ``seen``, or after ``KEEPALIVE_S``. The board is watched from loop
    time ``quiet_until`` on; the dispatcher all along."""

    async def board_moved() -> None:
        assert board is not None
        await asyncio.sleep(quiet_until - asyncio.get_running_loop().time())
        await board.changed_since(seen, KEEPALIVE_S)

    waits: set[asyncio.Future[Any]] = {
        asyncio.ensure_future(service.changed_since(version, KEEPALIVE_S))
    }
    if board is not None:
        waits.add(asyncio.ensure_future(board_moved()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return service.version, _version(board)


async def _unavailable() -> web.StreamResponse:
    return error_response(503, "this process does not run the dispatcher now")

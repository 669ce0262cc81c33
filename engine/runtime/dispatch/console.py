"""The duty room's page on the gateway's web port: live alerts, stations, silences,
history and dead letters, with acknowledge, close and silence actions.

The page is plain HTML, CSS and JavaScript served as package data (no build step, no
network: an edge box has no internet). It reads and acts through the same REST API as
``vigil alerts`` (``engine.runtime.dispatch.api``) and two routes of its own:

    GET /console                  the page (a shell without data: no token needed)
    GET /console/{file}           its script, style sheet and translations
    GET /api/stations             the registry's stations, each with its worst active
                                  level and whether a silence covers it now
    GET /api/stream               server-sent events: ``change`` with the dispatcher
                                  state's version whenever it is stored anew, a comment
                                  line every 15 s to keep proxies from closing it

The page reloads what it shows on each ``change`` (an alert stored is on the page in
well under a second). Access is the web port's one rule (``engine.runtime.web_access``):
the page and its files are open, ``/api/`` routes need what the API needs (loopback,
or the bearer token that the page asks for once and keeps in the tab's session storage).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

from aiohttp import web

from engine.contracts.alerts import Level
from engine.runtime.dispatch.service import DispatchService
from rules.registry import Station

__all__ = ["install_console"]

#: Seconds between keep-alive comments on an idle stream.
KEEPALIVE_S = 15.0

_FILES = {
    "console.js": "application/javascript",
    "console.css": "text/css",
    "i18n.json": "application/json",
}


def _asset(name: str) -> bytes:
    return (resources.files(__package__) / "console" / name).read_bytes()


def station_rows(stations: Iterable[Station], service: DispatchService) -> list[dict[str, Any]]:
    """One row per station: registry facts, worst active level, the silence covering it."""
    worst: dict[str, int] = {}
    last: dict[str, dict[str, Any]] = {}
    for state, _hidden in service.dispatcher.alerts():
        e = state.event
        if state.active:  # firing or acknowledged (a latched red included)
            worst[e.station] = max(worst.get(e.station, 0), int(state.level))
        if e.station not in last or e.at > last[e.station]["at"]:
            last[e.station] = {"metric": e.metric, "value": e.value, "at": e.at}
    now = service.clock.now_ms()
    rows = []
    for s in stations:
        labels = {"station": s.id, "kind": s.kind}
        labels.update({k: v for k, v in (("basin", s.basin), ("district", s.district)) if v})
        rows.append(
            {
                "id": s.id, "name": s.name, "kind": s.kind, "basin": s.basin,
                "district": s.district, "units": dict(s.metrics), "tz": getattr(s, "tz", None),
                "level": Level(worst.get(s.id, 0)).label,
                "silenced": service.dispatcher.silences.silencing(labels, now),
                "last_alert": last.get(s.id),
            }
        )  # fmt: skip
    return rows


def install_console(
    router: web.UrlDispatcher,
    service: DispatchService,
    stations: Callable[[], Iterable[Station]],
) -> None:
    """Add the page and its two API routes to ``router`` (the gateway's aiohttp app)."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=_asset("index.html"), content_type="text/html", charset="utf-8")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _FILES:
            raise web.HTTPNotFound()
        return web.Response(body=_asset(name), content_type=_FILES[name], charset="utf-8")

    async def station_list(request: web.Request) -> web.Response:
        return web.json_response({"stations": station_rows(stations(), service)})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        version = service.version
        await response.write(f"retry: 1000\nevent: change\ndata: {version}\n\n".encode())
        while True:
            now = await service.changed_since(version, KEEPALIVE_S)
            if now == version:
                await response.write(b": keep-alive\n\n")
            else:
                version = now
                await response.write(f"event: change\ndata: {version}\n\n".encode())

    router.add_route("GET", "/console", page)
    router.add_route("GET", "/console/{name}", asset)
    router.add_route("GET", "/api/stations", station_list)
    router.add_route("GET", "/api/stream", stream)

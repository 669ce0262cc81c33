"""The duty room's page's own routes (``engine/runtime/dispatch/console.py``) served by
aiohttp on a real port, in front of a real ``DispatchService`` (outbox in tmp, manual
clock) and a station board fed telemetry batches: what ``/api/stations`` says of each
station, strict JSON for a browser, and the stream's change events."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from engine.contracts.alerts import Level, transition_event
from engine.contracts.batch import Quality, TelemetryBatch, Tick
from engine.dispatch.clock import ManualClock
from engine.dispatch.config import parse_dispatch_config
from engine.runtime.dispatch import console
from engine.runtime.dispatch.api import install_api
from engine.runtime.dispatch.board import StationBoard
from engine.runtime.dispatch.console import install_console
from engine.runtime.dispatch.outbox import Outbox
from engine.runtime.dispatch.service import DispatchService
from engine.runtime.dispatch.wiring import build_receivers
from rules.station import Station
from tests.unit.dispatch_support import MIN, T0, event

ROUTING = """
version: 1
receivers:
  - {name: log, type: jsonl, path: notifications.jsonl}
route: {receivers: [log], group_by: [station], group_wait: 0s, group_interval: 1m}
"""
STATIONS = [
    Station(id=s, kind="river_gauge", basin="qiantang", metrics={"water_level": "m"})
    for s in ("HZ001", "HZ002", "HZ003", "HZ004")
]


def strict_json(text: str) -> Any:
    """What a browser's ``JSON.parse`` accepts: no NaN, no Infinity."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@asynccontextmanager
async def serving(tmp: Path) -> AsyncIterator[tuple[DispatchService, StationBoard, str]]:
    cfg = parse_dispatch_config(ROUTING, str(tmp / "routing.yaml"))  # the jsonl file in tmp
    service = DispatchService(cfg, Outbox(tmp / "dispatch"), build_receivers(cfg), ManualClock(T0))
    board = StationBoard()
    app = web.Application()
    install_api(app.router, service)
    install_console(app.router, service, lambda: STATIONS, board=board)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield service, board, f"http://127.0.0.1:{port}"
    finally:
        await service.stop(None)
        await runner.cleanup()


def test_stations_show_last_reading_qc_state_and_the_trace_of_alerting_ones(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with serving(tmp_path) as (service, board, url):
            board.observe(TelemetryBatch.from_rows([
                ("HZ001", "water_level", T0 + i * 5 * MIN, 4.0 + i / 10) for i in range(4)
            ] + [("HZ002", "water_level", T0, 2.5), ("HZ003", "water_level", T0, 1)]))  # fmt: skip
            suspect = TelemetryBatch.from_rows([("HZ002", "water_level", T0 + MIN, 2.6)])
            suspect.quality[:] = Quality.SUSPECT
            board.observe(suspect)
            silent = transition_event(
                "t.level#silent", "HZ003", "water_level", Level.BLUE, Level.NONE, T0,
                T0 + 60 * MIN, math.nan, math.nan, "HZ003 silent", {"health": "silent"},
            )  # fmt: skip
            service.receive([event("HZ001", "red", at=T0 + 15 * MIN), silent])
            await service.tick()
            async with httpx.AsyncClient() as client:
                alerts = strict_json((await client.get(url + "/api/alerts")).text)["alerts"]
                rows = strict_json((await client.get(url + "/api/stations")).text)["stations"]
        by = {r["id"]: r for r in rows}
        assert {a["station"]: a["value"] for a in alerts} == {"HZ001": 5.0, "HZ003": None}
        assert by["HZ001"]["readings"] == {
            "water_level": {"value": 4.3, "ts": T0 + 15 * MIN, "quality": "unchecked"}
        }
        assert by["HZ001"]["qc"] == "ok"
        assert by["HZ001"]["level"] == "red"
        assert by["HZ001"]["spark"] == {
            "water_level": [[T0 + i * 5 * MIN, 4.0 + i / 10] for i in range(4)]
        }
        assert by["HZ002"]["readings"]["water_level"]["value"] == 2.6
        assert by["HZ002"]["qc"] == "suspect"
        assert by["HZ002"]["spark"] == {}  # no active alert: no trace sent
        assert by["HZ003"]["qc"] == "silent"
        assert (by["HZ004"]["qc"], by["HZ004"]["readings"]) == ("unknown", {})

    asyncio.run(main())


def test_a_process_that_stops_running_the_dispatcher_ends_the_stream_and_forwards(
    tmp_path: Path,
) -> None:
    """A Kafka worker's page: while it owns the dispatcher it answers itself; once the
    ownership moves its open streams end (the page reconnects) and ``/api/stations`` and
    ``/api/stream`` go to the forwarders (the owner's)."""

    async def main() -> None:
        service = DispatchService(
            parse_dispatch_config(ROUTING, str(tmp_path / "routing.yaml")),
            Outbox(tmp_path / "dispatch"), {}, ManualClock(T0),
        )  # fmt: skip
        owned: list[DispatchService | None] = [service]
        forwarded: list[str] = []

        async def forward(request: web.Request) -> web.StreamResponse:
            forwarded.append(request.path)
            return web.json_response({"forwarded": request.path})

        app = web.Application()
        install_console(
            app.router, lambda: owned[0], lambda: STATIONS,
            forward=forward, forward_stream=forward,
        )  # fmt: skip
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        try:
            async with (
                httpx.AsyncClient(timeout=30) as client,
                client.stream("GET", url + "/api/stream") as stream,
            ):
                lines = stream.aiter_lines()
                assert [await anext(lines) for _ in range(3)] == [
                    "retry: 1000", "event: change", "data: 0",
                ]  # fmt: skip
                owned[0] = None  # the partition was revoked
                service.receive([event("HZ001", "red", at=T0)])
                await service.tick()  # the last change it stores wakes the stream
                rest = [line async for line in lines]  # returns: the stream ended
                assert [x for x in rest if x] == ["event: change", "data: 1"]
                stations = (await client.get(url + "/api/stations")).json()
                streamed = (await client.get(url + "/api/stream")).json()
            assert (stations, streamed) == (
                {"forwarded": "/api/stations"}, {"forwarded": "/api/stream"},
            )  # fmt: skip
            assert forwarded == ["/api/stations", "/api/stream"]
        finally:
            await service.stop(None)
            await runner.cleanup()

    asyncio.run(main())


async def _event(lines: AsyncIterator[str], limit_s: float = 30.0) -> list[str]:
    """The next server-sent event's lines (comments and blank lines skipped); fails if
    none comes in ``limit_s`` (keep-alive comments would keep a read waiting forever)."""
    out: list[str] = []
    try:
        async with asyncio.timeout(limit_s):
            async for line in lines:
                if line and not line.startswith(":"):
                    out.append(line)
                elif not line and out:
                    return out
    except TimeoutError:
        raise AssertionError(f"no event in {limit_s} s (got {out})") from None
    raise AssertionError(f"the stream ended after {out}")


def test_the_stream_tells_of_new_readings_that_change_no_alert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reading moves the station table and the sparklines without any alert changing:
    the stream says ``readings`` with the board's version (a tick, which carries none,
    does not move it), and the page reloads its stations on it. An alert stored later
    is a ``change`` as before (the page then reloads everything)."""
    # A stream notices its reader gone when it next writes: soon, so the server stops.
    monkeypatch.setattr(console, "KEEPALIVE_S", 0.2)

    async def main() -> None:
        async with (
            serving(tmp_path) as (service, board, url),
            httpx.AsyncClient(timeout=30) as client,
            client.stream("GET", url + "/api/stream") as stream,
        ):
            lines = stream.aiter_lines()
            assert await _event(lines) == ["retry: 1000", "event: change", "data: 0"]
            board.observe(TelemetryBatch.of_tick(Tick(T0, 5000)))
            board.observe(TelemetryBatch.from_rows([("HZ002", "water_level", T0, 2.5)]))
            assert await _event(lines) == ["event: readings", "data: 1"]
            service.receive([event("HZ001", "red", at=T0)])
            await service.tick()
            assert await _event(lines) == ["event: change", "data: 1"]

    asyncio.run(main())

"""The gateway's dispatch service in-process, on a manual clock: a real outbox (RocksDB in
tmp), a real webhook receiver against a real HTTP server on loopback. The delivery
loop's backoff waits on the test's clock (``sleep``), so ten minutes of outage take a
second and no test sleeps for a timer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from connectors.mqtt.mosquitto import free_port
from engine.dispatch.clock import ManualClock
from engine.runtime.dispatch.outbox import Outbox
from engine.runtime.dispatch.service import DispatchService
from engine.runtime.dispatch.wiring import build_receivers
from tests.integration.http_receiver import HttpReceiver
from tests.unit.dispatch_support import MIN, T0, S, config, event

ROUTING = """
version: 1
receivers:
  - {name: duty, type: webhook, url: "http://127.0.0.1:PORT/duty", secret_env: HOOK_SECRET,
     retry: {attempts: 1}, timeout_s: 5}
route:
  receivers: [duty]
  group_by: [basin]
  group_wait: 10s
  group_interval: 1m
"""


class ClockSleep:
    """Stands in for ``asyncio.sleep`` in the delivery loop: a sleeper wakes once the
    test has moved the manual clock past its deadline."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.delays: list[float] = []
        self._sleepers: list[tuple[int, asyncio.Future[None]]] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        wake = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.clock.now_ms() + int(seconds * 1000), wake))
        await wake

    @property
    def asleep(self) -> bool:
        return bool(self._sleepers)

    def wake_due(self) -> None:
        now = self.clock.now_ms()
        for entry in [e for e in self._sleepers if e[0] <= now]:
            self._sleepers.remove(entry)
            entry[1].set_result(None)


async def settle(service: DispatchService, sleep: ClockSleep) -> None:
    """Until the delivery loop backs off (waiting on the clock) or has nothing left."""
    for _ in range(3000):
        if sleep.asleep or not any(service.pending().values()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"delivery did not settle: {service.pending()}")


def make_service(
    tmp: Path, port: int, clock: ManualClock, sleep: Callable[[float], Awaitable[None]]
) -> DispatchService:
    cfg = config(ROUTING.replace("PORT", str(port)))
    receivers = build_receivers(cfg)
    return DispatchService(
        cfg, Outbox(tmp / "dispatch"), receivers, clock,
        retry_initial_s=1.0, retry_max_s=60.0, sleep=sleep,
    )  # fmt: skip


def test_a_ten_minute_outage_delivers_everything_afterwards_in_order_none_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s")
    port = free_port()
    clock = ManualClock(T0)
    sleep = ClockSleep(clock)

    # A flood in one basin, minute by minute, while the receiver is away.
    story = {
        0: [event("A", "yellow", at=T0), event("B", "yellow", at=T0)],
        2 * MIN: [event("A", "orange", "yellow", at=T0 + 2 * MIN)],
        4 * MIN: [event("C", "yellow", at=T0 + 4 * MIN)],
        6 * MIN: [event("B", "none", "yellow", at=T0 + 6 * MIN)],
        8 * MIN: [event("A", "yellow", "orange", at=T0 + 8 * MIN)],
        9 * MIN: [event("C", "none", "yellow", at=T0 + 9 * MIN)],
        11 * MIN: [event("A", "none", "yellow", at=T0 + 11 * MIN)],
    }

    async def run() -> list[dict[str, object]]:
        service = make_service(tmp_path, port, clock, sleep)
        delivery = asyncio.create_task(service.deliver_forever())
        server: HttpReceiver | None = None
        try:
            for second in range(0, 15 * 60 + 1):
                if second == 10 * 60 + 30:  # back after ten and a half minutes
                    server = HttpReceiver(port=port).__enter__()
                service.receive(story.get(second * S, []))
                await service.tick()
                sleep.wake_due()
                await settle(service, sleep)
                clock.advance(S)
            assert server is not None
            assert not any(service.pending().values())
            assert service.outbox.pending() == []
            return [r.json() for r in server.requests]
        finally:
            delivery.cancel()
            await service.stop(None)
            if server is not None:
                server.__exit__(None, None, None)

    bodies = asyncio.run(run())
    # The receiver was away: the backoff doubled up to its cap and kept trying.
    assert sleep.delays[:7] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert set(sleep.delays[7:]) == {60.0}
    assert len(sleep.delays) >= 10
    # Everything made during the outage came afterwards, in the order made, none twice.
    keys = [b["key"] for b in bodies]
    assert len(keys) == len(set(keys))
    assert [int(k.rsplit(":", 1)[1]) for k in keys] == list(range(1, len(keys) + 1))
    created = [b["created_at"] for b in bodies]
    assert created == sorted(created)
    made_during_outage = [b for b in bodies if b["created_at"] < T0 + (10 * 60 + 30) * S]
    assert len(made_during_outage) >= 5
    # The story is all there: each transition of each gauge, ending in the all-clear.
    told = [(a["station"], a["level"], a["state"]) for b in bodies for a in b["alerts"]]
    for item in [("A", "yellow", "firing"), ("A", "orange", "firing"), ("B", "none", "resolved"),
                 ("C", "yellow", "firing"), ("C", "none", "resolved")]:  # fmt: skip
        assert item in told, item
    assert bodies[-1]["status"] == "resolved"


def test_a_route_without_group_wait_notifies_at_once_not_at_the_next_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s")

    async def run() -> None:
        with HttpReceiver() as server:
            clock = ManualClock(T0)
            cfg = config(ROUTING.replace("PORT", str(server.port)).replace("10s", "0s"))
            service = DispatchService(cfg, Outbox(tmp_path / "d"), build_receivers(cfg), clock)
            running = asyncio.create_task(service.run_forever(tick_s=3600))
            try:
                await asyncio.sleep(0.1)  # the first tick has run; the next is an hour away
                service.receive([event("A", "red", at=T0)])
                for _ in range(3000):
                    if server.requests:
                        break
                    await asyncio.sleep(0.01)
                [request] = server.requests
                assert request.json()["alerts"][0]["station"] == "A"
            finally:
                running.cancel()
                await service.stop(None)

    asyncio.run(run())

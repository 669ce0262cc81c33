"""The dispatcher in a flood storm: 10,000 level transitions in one minute across 1,000
gauges in 10 basins, grouped per basin, one receiver rate-limited (the workload and
routing of ``tests/unit/test_dispatch_storm.py``).

Two measurements, on a manual clock (ticks every simulated second, events fed at their
arrival second), wall time of the dispatcher's own work only:

- ``pure``: ``engine.dispatch.Dispatcher`` (``receive`` + ``tick``), no I/O;
- ``gateway``: ``DispatchService`` as the gateway runs it: each tick's notifications and
  the state stored in one synced RocksDB write (on its writer thread) before they are
  queued, delivered to in-memory receivers and marked done.

    NUMBA_CACHE_DIR=$PWD/.cache/numba .venv/bin/python bench/dispatch_storm.py

Prints transitions/s and the notifications made; run it once, the figures go to
bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from engine.contracts.notification import Notification
from engine.dispatch.clock import ManualClock
from engine.dispatch.dispatcher import Dispatcher
from engine.runtime.dispatch.outbox import Outbox
from engine.runtime.dispatch.service import DispatchService
from tests.unit.dispatch_support import T0, S, config
from tests.unit.test_dispatch_storm import ROUTING, _storm

HORIZON_S = 120  # the minute of the storm and one more, for the groups' next looks


class Memory:
    """A receiver that confirms at once (the bench measures the dispatcher, not HTTP)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.got: list[Notification] = []

    async def send(self, n: Notification) -> None:
        self.got.append(n)

    async def aclose(self) -> None:
        return None


def _by_second() -> dict[int, list]:  # type: ignore[type-arg]
    out: dict[int, list] = {}  # type: ignore[type-arg]
    for t, event in _storm():
        out.setdefault(t // S + 1, []).append(event)
    return out


def pure() -> tuple[float, int]:
    storm = _by_second()
    clock = ManualClock(T0)
    d = Dispatcher(config(ROUTING), clock)
    made = 0
    start = time.perf_counter()
    for second in range(HORIZON_S):
        for event in storm.get(second, ()):
            d.receive(event)
        made += len(d.tick())
        clock.advance(S)
    return time.perf_counter() - start, made


def gateway() -> tuple[float, int, int]:
    storm = _by_second()

    async def run() -> tuple[float, int, int]:
        with tempfile.TemporaryDirectory() as tmp:
            clock = ManualClock(T0)
            cfg = config(ROUTING)
            receivers = {name: Memory(name) for name in cfg.receivers}
            service = DispatchService(cfg, Outbox(Path(tmp) / "d"), receivers, clock)
            delivery = asyncio.create_task(service.deliver_forever())
            start = time.perf_counter()
            for second in range(HORIZON_S):
                service.receive(storm.get(second, ()))
                await service.tick()
                await asyncio.sleep(0)  # let the deliveries run, as the event loop would
                clock.advance(S)
            while any(service.pending().values()):
                await asyncio.sleep(0)
            elapsed = time.perf_counter() - start
            delivery.cancel()
            await service.stop(None)
            return elapsed, service.counters["notifications"], service.counters["delivered"]

    return asyncio.run(run())


def main() -> None:
    transitions = sum(len(v) for v in _by_second().values())
    elapsed, made = pure()
    print(
        f"pure:    {transitions} transitions, {HORIZON_S} ticks in {elapsed:.3f} s = "
        f"{transitions / elapsed:,.0f} transitions/s; {made} notifications"
    )
    elapsed, made, delivered = gateway()
    print(
        f"gateway: {transitions} transitions, {HORIZON_S} ticks in {elapsed:.3f} s = "
        f"{transitions / elapsed:,.0f} transitions/s; {made} notifications stored, "
        f"{delivered} delivered"
    )


if __name__ == "__main__":
    main()

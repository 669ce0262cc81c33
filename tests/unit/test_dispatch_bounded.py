"""The dispatcher's state stays bounded (alerts that are over leave it for the history)
and is stored incrementally (a store writes the alerts that changed, one key each)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.dispatch.clock import ManualClock
from engine.dispatch.config import parse_dispatch_config
from engine.dispatch.dispatcher import Dispatcher
from engine.dispatch.lifecycle import AlertState
from engine.runtime.dispatch.outbox import Outbox
from engine.runtime.dispatch.service import DispatchService
from engine.runtime.dispatch.wiring import build_receivers
from tests.unit.dispatch_support import MIN, T0, config, event, run_for

ROUTING = """
version: 1
receivers: [{name: log, type: jsonl, path: log.jsonl}]
route: {receivers: [log], group_by: [station], group_wait: 0s, group_interval: 1m}
"""
HOUR = 60 * MIN


def test_alerts_that_are_over_are_forgotten_and_the_rest_kept() -> None:
    clock = ManualClock(T0)
    gone: list[AlertState] = []
    d = Dispatcher(config(ROUTING), clock, forget_after_ms=HOUR, on_forget=gone.append)
    # Two hundred short episodes, one after another, over two days.
    for i in range(200):
        at = clock.now_ms()
        d.receive(event(f"S{i}", "yellow", at=at))
        run_for(d, clock, MIN)
        d.receive(event(f"S{i}", "none", "yellow", at=at + MIN))
        run_for(d, clock, 13 * MIN)
    # Those still around: one a person has yet to close, one firing for days, one
    # acknowledged and still firing, one latched red nobody took.
    d.receive(event("OPEN", "yellow", at=clock.now_ms()))
    d.receive(event("ACKED", "yellow", at=clock.now_ms()))
    d.receive(event("LATCHED", "red", at=clock.now_ms()))
    run_for(d, clock, MIN)
    fp = {s.event.station: s.fingerprint for s in d.lifecycle}
    d.acknowledge(fp["ACKED"], "Li")
    d.receive(event("LATCHED", "none", "red", at=clock.now_ms()))
    run_for(d, clock, MIN)
    d.close(fp["S199"], "Wang", "checked")  # closed now: its hour starts again
    run_for(d, clock, 59 * MIN)
    assert {s.event.station for s in d.lifecycle} == {"S199", "OPEN", "ACKED", "LATCHED"}
    assert len(d.snapshot()["alerts"]) == 4
    assert {s.event.station for s in gone} == {f"S{i}" for i in range(199)}
    assert all(s.status == "resolved" and not s.routes for s in gone)

    run_for(d, clock, 2 * MIN)
    assert {s.event.station for s in d.lifecycle} == {"OPEN", "ACKED", "LATCHED"}
    assert gone[-1].closed is not None and gone[-1].closed.feedback == "checked"
    run_for(d, clock, 3 * 24 * HOUR, step=MIN)  # what is going on is never forgotten
    assert {s.event.station for s in d.lifecycle} == {"OPEN", "ACKED", "LATCHED"}
    assert next(s for s in d.lifecycle if s.event.station == "LATCHED").status == "firing"

    # A forgotten series that fires again is a new episode, told again.
    d.receive(event("S5", "orange", at=clock.now_ms()))
    told = run_for(d, clock, MIN)
    assert [(a.station, a.level) for n in told for a in n.alerts] == [("S5", "orange")]


def test_the_gateway_keeps_what_it_forgets_as_history(tmp_path: Path) -> None:
    async def main() -> None:
        clock = ManualClock(T0)
        cfg = parse_dispatch_config(ROUTING, str(tmp_path / "routing.yaml"))  # log beside it
        box = Outbox(tmp_path / "dispatch")
        service = DispatchService(cfg, box, build_receivers(cfg), clock, forget_after_ms=HOUR)
        service.receive([event("HZ001", "yellow", at=T0), event("HZ002", "red", at=T0)])
        await service.tick()
        clock.advance(MIN)
        service.receive([event("HZ001", "none", "yellow", at=T0 + MIN)])
        for _ in range(62):
            await service.tick()
            clock.advance(MIN)
        await service.stop(None)
        # The per-key store rebuilds the whole state exactly, and a restart continues it.
        assert box.snapshot() == service.dispatcher.snapshot()
        again = DispatchService(cfg, box, build_receivers(cfg), clock)
        assert again.dispatcher.snapshot() == service.dispatcher.snapshot()
        box.close()

    asyncio.run(main())
    box = Outbox(tmp_path / "dispatch")
    [old] = box.history()
    assert old["event"]["station"] == "HZ001" and old["event"]["state"] == "resolved"
    stored = box.snapshot()
    assert stored is not None
    assert [a["event"]["station"] for a in stored["alerts"].values()] == ["HZ002"]


def test_a_store_writes_only_the_alerts_that_changed(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    d = Dispatcher(config(ROUTING), clock)
    box = Outbox(tmp_path / "d")
    for i in range(50):
        d.receive(event(f"S{i}", "yellow", at=T0))
    run_for(d, clock, MIN)
    rest, changed, removed = d.changes()
    assert len(changed) == 50 and removed == [] and "alerts" not in rest
    box.persist(rest, alerts=changed, removed=removed)

    d.receive(event("S7", "orange", "yellow", at=T0 + MIN))
    d.tick()
    rest, changed, removed = d.changes()
    assert [c["event"]["station"] for c in changed.values()] == ["S7"]
    box.persist(rest, alerts=changed, removed=removed)
    assert d.changes()[1] == {}  # nothing since
    assert box.snapshot() == d.snapshot()
    box.close()
    again = Outbox(tmp_path / "d")
    stored = again.snapshot()
    assert stored is not None
    restored = Dispatcher.restore(config(ROUTING), clock, stored)
    assert restored.snapshot() == d.snapshot()
    assert len(restored.changes()[1]) == 50  # after a restore the first store has them all


def test_what_a_failed_store_held_goes_in_the_next(tmp_path: Path) -> None:
    async def main() -> None:
        clock = ManualClock(T0)
        cfg = parse_dispatch_config(ROUTING, str(tmp_path / "routing.yaml"))
        box = Outbox(tmp_path / "dispatch")
        service = DispatchService(cfg, box, build_receivers(cfg), clock)
        service.receive([event("HZ001", "yellow", at=T0), event("HZ002", "yellow", at=T0)])
        await service.tick()
        fp = next(s.fingerprint for s in service.dispatcher.lifecycle)
        write = box.write

        def full_disk(prepared: object) -> None:
            raise OSError(28, "No space left on device")

        box.write = full_disk  # type: ignore[method-assign]
        try:
            await service.acknowledge(fp, "Li")
        except OSError:
            pass
        else:
            raise AssertionError("the failed store was not reported")
        box.write = write  # type: ignore[method-assign]
        assert box.snapshot() != service.dispatcher.snapshot()
        await service.flush()  # the next store carries the acknowledgement
        assert box.snapshot() == service.dispatcher.snapshot()
        stored = box.snapshot()
        assert stored is not None and stored["alerts"][fp]["ack"]["by"] == "Li"
        await service.stop(None)

    asyncio.run(main())

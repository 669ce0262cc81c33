"""The alert's life on a manual clock: acknowledge, latch, close, escalation chains,
silences, and a restored dispatcher that continues exactly as an uninterrupted one."""

from __future__ import annotations

import json

import pytest

from engine.contracts.notification import Notification
from engine.dispatch.clock import ManualClock
from engine.dispatch.dispatcher import Dispatcher
from engine.dispatch.lifecycle import LifecycleError
from tests.unit.dispatch_support import MIN, T0, S, brief, config, dispatcher, event, run_for

ROUTING = """\
receivers:
  - {name: duty, type: webhook}
  - {name: head, type: sms}
  - {name: commander, type: sms, rate_limit: {messages: 1, per: 10m}}
route:
  receivers: [duty]
  group_by: [basin]
  group_wait: 30s
  group_interval: 5m
  routes:
    - name: orange and above
      matchers: [level>=orange]
      escalation:
        - {after: 10m, receivers: [head], name: section head}
        - {after: 30m, receivers: [commander], name: commander}
"""
HEAD = "escalation step 1: section head: unacknowledged for 10m"
COMMANDER = "escalation step 2: commander: unacknowledged for 30m"
REPEAT = "repeat: no change since the last message"
HELD = "1 more held back by rate limit"


def test_acknowledged_alerts_stop_escalating_and_a_worse_level_reopens_them() -> None:
    d, clock = dispatcher(ROUTING)
    d.receive(event("A", "orange", at=1))
    sent = run_for(d, clock, 12 * MIN)
    fp = sent[0].alerts[0].fingerprint
    state = d.acknowledge(fp, "Li Wei", "checking the gauge")
    assert (state.status, state.ack and state.ack.by, state.ack and state.ack.note) == (
        "acknowledged", "Li Wei", "checking the gauge",
    )  # fmt: skip
    sent += run_for(d, clock, 40 * MIN)  # no commander: acknowledged
    d.receive(event("A", "red", "orange", at=2))
    assert d.lifecycle.states[fp].status == "firing"
    sent += run_for(d, clock, 11 * MIN)
    assert [brief(n) for n in sent] == [
        (30, "duty", "firing", "orange", ["A:orange"], ""),
        (600, "head", "firing", "orange", ["A:orange"], HEAD),
        (3150, "duty", "firing", "red", ["A:red"], ""),
        (3720, "head", "firing", "red", ["A:red"], HEAD),
    ]  # fmt: skip


def test_an_unacknowledged_red_escalates_step_by_step() -> None:
    d, clock = dispatcher(ROUTING)
    d.receive(event("A", "red", at=1))
    sent = [n for n in run_for(d, clock, 31 * MIN) if n.receiver != "duty"]
    assert [brief(n) for n in sent] == [
        (600, "head", "firing", "red", ["A:red"], HEAD),
        (1800, "commander", "firing", "red", ["A:red"], COMMANDER),
    ]  # fmt: skip


def test_a_held_escalation_is_sent_later_once() -> None:
    d, clock = dispatcher(ROUTING)
    d.receive(event("A", "red", at=1))
    d.receive(event("B", "red", at=1, basin="oujiang"))
    sent = [n for n in run_for(d, clock, 45 * MIN) if n.receiver == "commander"]
    assert [brief(n) for n in sent] == [
        (1800, "commander", "firing", "red", ["A:red"], f"{COMMANDER}; {HELD}"),
        (2400, "commander", "firing", "red", ["B:red"], COMMANDER),
    ]  # fmt: skip


def test_the_escalation_clock_stands_still_while_the_alert_is_silenced() -> None:
    d, clock = dispatcher(ROUTING)
    d.receive(event("A", "orange", at=1))
    d.add_silence(["station=A"], T0 + 5 * MIN, T0 + 25 * MIN, "Zhang", "maintenance")
    sent = [n for n in run_for(d, clock, 40 * MIN) if n.receiver == "head"]
    assert [brief(n)[0] for n in sent] == [30 * 60]  # 10 min, 20 of them silenced


def test_a_red_latches_until_acknowledged_then_resolves_and_the_all_clear_goes() -> None:
    d, clock = dispatcher(ROUTING)
    d.receive(event("A", "red", at=1))
    sent = run_for(d, clock, 60 * S)
    fp = sent[0].alerts[0].fingerprint
    d.receive(event("A", "none", "red", at=2))
    assert (d.lifecycle.states[fp].status, d.lifecycle.states[fp].latched) == ("firing", True)
    sent += [n for n in run_for(d, clock, 20 * MIN) if n.receiver == "duty"]
    state = d.acknowledge(fp, "Li Wei")
    assert state.status == "resolved"
    sent += run_for(d, clock, 10 * MIN)
    latched = "A latched: data cleared, stays until acknowledged"
    assert [brief(n) for n in sent] == [
        (30, "duty", "firing", "red", ["A:red"], ""),
        (330, "duty", "firing", "red", ["A:none"], latched),
        (1230, "duty", "firing", "red", ["A:none"], f"{REPEAT}; {latched}"),
        (1530, "duty", "resolved", "none", ["A:none"], ""),
    ]  # fmt: skip


def test_an_orange_does_not_latch_and_an_acknowledged_red_resolves_with_the_data() -> None:
    d, clock = dispatcher(ROUTING)
    d.receive(event("A", "orange", at=1))
    d.receive(event("B", "red", at=1))
    run_for(d, clock, 60 * S)
    fp_b = next(s.fingerprint for s in d.lifecycle if s.event.station == "B")
    d.acknowledge(fp_b, "Li Wei")
    d.receive(event("A", "none", "orange", at=2))
    d.receive(event("B", "none", "red", at=2))
    assert sorted(s.status for s in d.lifecycle) == ["resolved", "resolved"]


def test_close_needs_a_resolved_alert_and_keeps_the_feedback() -> None:
    d, _ = dispatcher(ROUTING)
    d.receive(event("A", "orange", at=1))
    fp = next(iter(d.lifecycle)).fingerprint
    with pytest.raises(LifecycleError) as exc:
        d.close(fp, "Li Wei", "sandbags placed")
    assert str(exc.value) == (
        f"alert {fp} is still firing: it can be closed once its data clears "
        "(acknowledge it to stop repeats and escalation)"
    )
    d.receive(event("A", "none", "orange", at=2))
    with pytest.raises(LifecycleError) as exc:
        d.acknowledge(fp, "Li Wei")
    assert str(exc.value) == f"alert {fp} is resolved: there is nothing to acknowledge"
    state = d.close(fp, "Li Wei", "sandbags placed; levee held")
    assert (state.status, state.closed and state.closed.feedback) == (
        "closed", "sandbags placed; levee held",
    )  # fmt: skip
    with pytest.raises(LifecycleError) as exc:
        d.acknowledge("0000", "Li Wei")
    assert str(exc.value) == "no alert '0000'"


def test_silences_list_expire_and_are_forgotten_after_a_week() -> None:
    d, clock = dispatcher(ROUTING)
    d.add_silence(["station=A"], T0 + MIN, T0 + 60 * MIN, "Zhang", "repair")
    d.add_silence(['station=~"B.*"'], T0, T0 + 60 * MIN, "Zhang", "repair")
    assert [(s.id, state) for s, state in d.silences.list_at(T0)] == [
        ("s1", "pending"),
        ("s2", "active"),
    ]
    d.expire_silence("s2")
    assert [state for _, state in d.silences.list_at(T0)] == ["pending", "expired"]
    with pytest.raises(ValueError, match="must end after it starts"):
        d.add_silence(["station=A"], T0 + MIN, T0 + MIN, "Zhang", "")
    clock.advance(8 * 24 * 60 * MIN)
    d.tick()
    assert d.silences.list_at(clock.now_ms()) == []
    assert (
        d.add_silence(["station=C"], clock.now_ms(), clock.now_ms() + MIN, "Zhang", "").id == "s3"
    )


# --- restore: a snapshot taken anywhere continues exactly -----------------------------

STORY: list[tuple[int, str, tuple[object, ...]]] = [
    # (seconds, action, arguments)
    (0, "event", ("A", "yellow", "none", 1)),
    (5, "event", ("B", "red", "none", 2)),
    (8, "event", ("qiantang", "orange", "none", 3)),
    (20, "silence", ("station=C",)),
    (40, "event", ("C", "orange", "none", 4)),
    (200, "event", ("A", "orange", "yellow", 5)),
    (700, "ack", ("A",)),
    (900, "event", ("B", "none", "red", 6)),
    (1300, "event", ("D", "yellow", "none", 7)),
    (2000, "event", ("A", "red", "orange", 8)),
    (2500, "event", ("A", "none", "red", 9)),
    (3000, "ack", ("B",)),
    (3500, "event", ("qiantang", "none", "orange", 10)),
]
END_S = 4 * 3600


def _act(d: Dispatcher, action: str, args: tuple[object, ...]) -> None:
    if action == "event":
        station, level, previous, at = args
        labels = (
            {"rule": "flood.basin_corroborated", "group": "qiantang", "district": "qiantang"}
            if station == "qiantang" else {}
        )  # fmt: skip
        d.receive(event(str(station), str(level), str(previous), int(at), **labels))  # type: ignore[call-overload]
    elif action == "silence":
        now = d.clock.now_ms()
        d.add_silence([str(args[0])], now, now + 30 * MIN, "Zhang", "repair")
    else:
        fp = next(s.fingerprint for s in d.lifecycle if s.event.station == args[0])
        d.acknowledge(fp, "Li Wei", "taken")


def _run(cut_at_s: int | None) -> list[Notification]:
    routing = config(ROUTING)
    clock = ManualClock(T0)
    d = Dispatcher(routing, clock)
    story = list(STORY)
    out: list[Notification] = []
    for second in range(1, END_S + 1):
        clock.set(T0 + second * S)
        while story and story[0][0] <= second:
            _, action, args = story.pop(0)
            _act(d, action, args)
        out += d.tick()
        if second == cut_at_s:  # a restart: only the snapshot survives, as JSON
            saved = json.loads(json.dumps(d.snapshot()))
            d = Dispatcher.restore(routing, clock, saved)
    return out


def test_a_restored_dispatcher_sends_what_an_uninterrupted_one_would() -> None:
    whole = _run(None)
    receivers = {n.receiver for n in whole}
    assert receivers == {"duty", "head", "commander"} and len(whole) > 10
    assert len({n.key for n in whole}) == len(whole)
    for cut in (10, 35, 650, 1250, 2600, 3400):
        assert _run(cut) == whole, f"restored at {cut} s"

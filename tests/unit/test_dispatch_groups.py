"""Grouping and storm control on a manual clock: wait, interval, repeat, all-clear,
silences, inhibition and rate limits, each message asserted whole."""

from __future__ import annotations

from engine.dispatch.clock import ManualClock
from engine.dispatch.dispatcher import Dispatcher
from tests.unit.dispatch_support import MIN, T0, S, brief, dispatcher, event, run_for

ROUTING = """\
receivers:
  - {name: duty, type: webhook, url: "http://duty.example"}
route:
  receivers: [duty]
  group_by: [basin]
  group_wait: 30s
  group_interval: 5m
"""


def _at(clock: ManualClock, seconds: int) -> None:
    clock.set(T0 + seconds * S)


def test_group_wait_gathers_an_alert_with_its_companions_per_basin() -> None:
    d, clock = dispatcher(ROUTING)
    d.receive(event("A", "yellow", at=1))
    _at(clock, 10)
    d.receive(event("B", "yellow", at=2))
    _at(clock, 20)
    d.receive(event("C", "yellow", at=3, basin="oujiang"))
    sent = run_for(d, clock, 60 * S)
    assert [brief(n) for n in sent] == [
        (30, "duty", "firing", "yellow", ["A:yellow", "B:yellow"], ""),
        (50, "duty", "firing", "yellow", ["C:yellow"], ""),
    ]
    assert sent[0].group_labels == {"basin": "qiantang"}


def test_updates_wait_for_the_group_interval_but_a_worse_level_does_not() -> None:
    d, clock = dispatcher(ROUTING)
    d.receive(event("A", "yellow", at=1))
    sent = run_for(d, clock, 40 * S)
    d.receive(event("B", "yellow", at=2))  # t=40 s: waits for the interval (330 s)
    sent += run_for(d, clock, 300 * S)
    _at(clock, 400)
    d.receive(event("A", "red", "yellow", at=3))  # a level the group has not shown
    sent += run_for(d, clock, 60 * S)
    assert [brief(n) for n in sent] == [
        (30, "duty", "firing", "yellow", ["A:yellow"], ""),
        (330, "duty", "firing", "yellow", ["A:yellow", "B:yellow"], ""),
        (430, "duty", "firing", "red", ["A:red", "B:yellow"], ""),
    ]


def test_red_repeats_every_15_minutes_until_acknowledged_and_yellow_does_not() -> None:
    d, clock = dispatcher(ROUTING)
    d.receive(event("A", "red", at=1))
    d.receive(event("Y", "yellow", at=1, basin="oujiang"))
    sent = run_for(d, clock, 40 * MIN)
    fingerprint = sent[0].alerts[0].fingerprint
    d.acknowledge(fingerprint, "Li Wei", "on my way")
    sent += run_for(d, clock, 60 * MIN)
    assert [brief(n) for n in sent] == [
        (30, "duty", "firing", "red", ["A:red"], ""),
        (30, "duty", "firing", "yellow", ["Y:yellow"], ""),
        (930, "duty", "firing", "red", ["A:red"], "repeat: no change since the last message"),
        (1830, "duty", "firing", "red", ["A:red"], "repeat: no change since the last message"),
    ]


def test_all_clear_per_alert_then_for_the_group_which_closes() -> None:
    d, clock = dispatcher(ROUTING)
    d.receive(event("A", "yellow", at=1))
    d.receive(event("B", "orange", at=1))
    sent = run_for(d, clock, 60 * S)
    d.receive(event("A", "none", "yellow", at=2))
    sent += run_for(d, clock, 300 * S)
    d.receive(event("B", "none", "orange", at=3))
    sent += run_for(d, clock, 300 * S)
    d.receive(event("C", "blue", at=4))  # a new group: new id, numbering from 1
    sent += run_for(d, clock, 60 * S)
    assert [brief(n) for n in sent] == [
        (30, "duty", "firing", "orange", ["B:orange", "A:yellow"], ""),
        (330, "duty", "firing", "orange", ["B:orange", "A:none"], ""),
        (630, "duty", "resolved", "none", ["B:none"], ""),
        (690, "duty", "firing", "blue", ["C:blue"], ""),
    ]
    keys = [n.key.split(":") for n in sent]
    assert [k[2] for k in keys] == ["1", "2", "3", "1"]
    assert len({k[1] for k in keys[:3]}) == 1 and keys[3][1] != keys[0][1]
    assert list(d.groups) and [g.members for g in d.groups] == [
        {sent[3].alerts[0].fingerprint: None}
    ]


def test_without_send_resolved_the_all_clear_is_not_sent() -> None:
    d, clock = dispatcher(
        ROUTING.replace("group_wait: 30s", "group_wait: 30s\n  send_resolved: false")
    )
    d.receive(event("A", "yellow", at=1))
    sent = run_for(d, clock, 60 * S)
    d.receive(event("A", "none", "yellow", at=2))
    sent += run_for(d, clock, 600 * S)
    assert [brief(n) for n in sent] == [(30, "duty", "firing", "yellow", ["A:yellow"], "")]
    assert list(d.groups) == []


def test_an_alert_that_clears_within_group_wait_is_not_told() -> None:
    d, clock = dispatcher(ROUTING)
    d.receive(event("A", "yellow", at=1))
    _at(clock, 10)
    d.receive(event("A", "none", "yellow", at=2))
    assert run_for(d, clock, 600 * S) == []
    assert list(d.groups) == []


def test_a_repeated_or_older_event_changes_nothing() -> None:
    d, clock = dispatcher(ROUTING)
    assert d.receive(event("A", "orange", at=10))
    assert not d.receive(event("A", "orange", at=10))
    assert not d.receive(event("A", "yellow", at=5))
    assert [brief(n) for n in run_for(d, clock, 60 * S)] == [
        (30, "duty", "firing", "orange", ["A:orange"], "")
    ]


def test_silenced_alerts_are_kept_visible_but_not_sent_until_the_silence_ends() -> None:
    d, clock = dispatcher(ROUTING)
    silence = d.add_silence(["station=A"], T0, T0 + 20 * MIN, "Zhang", "gauge A under repair")
    d.receive(event("A", "orange", at=1))
    d.receive(event("B", "yellow", at=1))
    sent = run_for(d, clock, 60 * S)
    listing = {s.event.station: (s.status, why) for s, why in d.alerts()}
    assert listing == {"A": ("firing", "silenced by s1"), "B": ("firing", None)}
    sent += run_for(d, clock, 25 * MIN)
    assert silence.id == "s1"
    assert [state for _, state in d.silences.list_at(clock.now_ms())] == ["expired"]
    assert [brief(n) for n in sent] == [
        (30, "duty", "firing", "yellow", ["B:yellow"], "1 silenced by s1"),
        (1230, "duty", "firing", "orange", ["A:orange", "B:yellow"], ""),
    ]


def test_a_silence_without_matchers_is_refused() -> None:
    d, _ = dispatcher(ROUTING)
    try:
        d.add_silence([], T0, T0 + MIN, "Zhang", "")
    except ValueError as exc:
        assert str(exc) == "a silence needs at least one matcher; it would silence everything"
    else:
        raise AssertionError("a silence without matchers was accepted")


BASIN = {"group": "qiantang", "district": "qiantang", "stations": "2"}


def test_a_basin_alert_covers_its_gauges_at_or_below_its_level_not_health_or_rain() -> None:
    d, clock = dispatcher(ROUTING)
    d.receive(event("A", "yellow", at=1))
    d.receive(event("B", "orange", at=1))
    d.receive(event("C", "red", at=1))
    d.receive(event("R1", "orange", at=1, rule="flood.rain_1h", domain="rainfall"))
    d.receive(event("A", "blue", at=1, rule="flood.river_level#silent", health="silent"))
    d.receive(event("qiantang", "orange", at=2, rule="flood.basin_corroborated", **BASIN))
    sent = run_for(d, clock, 60 * S)
    assert [brief(n) for n in sent] == [
        (
            30, "duty", "firing", "red",
            ["C:red", "R1:orange", "qiantang:orange", "A:blue"],
            "2 covered by basin alert covers its gauges",
        )
    ]  # fmt: skip


def test_the_basin_alert_clearing_uncovers_its_gauges() -> None:
    d, clock = dispatcher(ROUTING)
    d.receive(event("A", "yellow", at=1))
    d.receive(event("qiantang", "orange", at=2, rule="flood.basin_corroborated", **BASIN))
    sent = run_for(d, clock, 60 * S)
    d.receive(event("qiantang", "none", "orange", at=3, rule="flood.basin_corroborated", **BASIN))
    sent += run_for(d, clock, 300 * S)
    assert [brief(n) for n in sent] == [
        (
            30,
            "duty",
            "firing",
            "orange",
            ["qiantang:orange"],
            "1 covered by basin alert covers its gauges",
        ),
        (330, "duty", "firing", "yellow", ["A:yellow", "qiantang:none"], ""),
    ]


RATE_LIMITED = """\
receivers:
  - {name: sms, type: sms, rate_limit: {messages: 2, per: 1m}}
route:
  receivers: [sms]
  group_by: [station]
  group_wait: 30s
"""


def test_a_rate_limited_receiver_gets_everything_later_highest_level_first() -> None:
    d, clock = dispatcher(RATE_LIMITED)
    for station, level in [
        ("A", "blue"),
        ("B", "red"),
        ("C", "yellow"),
        ("D", "orange"),
        ("E", "blue"),
    ]:
        d.receive(event(station, level, at=1))
    sent = run_for(d, clock, 200 * S)
    assert [brief(n) for n in sent] == [
        (30, "sms", "firing", "red", ["B:red"], "3 more held back by rate limit"),
        (30, "sms", "firing", "orange", ["D:orange"], "3 more held back by rate limit"),
        (90, "sms", "firing", "yellow", ["C:yellow"], "1 more held back by rate limit"),
        (90, "sms", "firing", "blue", ["A:blue"], "1 more held back by rate limit"),
        (150, "sms", "firing", "blue", ["E:blue"], ""),
    ]


def test_a_held_group_sends_its_newest_state_once() -> None:
    d, clock = dispatcher(RATE_LIMITED.replace("messages: 2", "messages: 1"))
    d.receive(event("A", "red", at=1))
    d.receive(event("B", "yellow", at=1))
    sent = run_for(d, clock, 40 * S)
    d.receive(event("B", "orange", "yellow", at=2))  # while B's first message is held
    sent += run_for(d, clock, 60 * S)
    assert [brief(n) for n in sent] == [
        (30, "sms", "firing", "red", ["A:red"], "1 more held back by rate limit"),
        (90, "sms", "firing", "orange", ["B:orange"], ""),
    ]


def test_links_are_made_for_each_firing_alert() -> None:
    clock = ManualClock(T0)
    d = Dispatcher(
        dispatcher(ROUTING)[0].config, clock, links=lambda fp, now: f"https://ack/{fp}?t={now}"
    )
    d.receive(event("A", "yellow", at=1))
    (sent,) = run_for(d, clock, 60 * S)
    fp = sent.alerts[0].fingerprint
    assert sent.links == {fp: f"https://ack/{fp}?t={T0 + 30 * S}"}

"""Corroboration: k stations of a group at a level within a time span."""

from __future__ import annotations

import asyncio
import dataclasses
import types

from engine.contracts.alerts import AlertEvent, Level, fingerprint
from engine.contracts.ruleset import CorroborationRule
from engine.evaluation.corroboration import Corroborator
from engine.runtime.corroboration.stage import CorroborationStage
from engine.runtime.sending import Outgoing

H = 3_600_000
RULE = CorroborationRule(
    rule_id="basin2", source_rule="flood", min_level=Level.YELLOW, k=2,
    groups={"east": ("A", "B", "C"), "west": ("D",)}, within_ms=H, level=Level.ORANGE,
    for_ms=0, summary="{basin}: {value:.0f} gauges at yellow or above",
    resolved_summary="{basin}: all clear",
)  # fmt: skip


def _ev(station: str, level: str, at: int, previous: str = "none") -> AlertEvent:
    return AlertEvent(
        fingerprint("flood", station, "water_level"), "flood", station, "water_level", level,
        previous, "resolved" if level == "none" else "firing", at, at, 1.0, 1.0, "",
    )  # fmt: skip


def _run(events: list[AlertEvent]) -> list[tuple[str, str, str, int, int]]:
    c = Corroborator((RULE,))
    return [
        (g.station, g.previous_level, g.level, g.at, g.started_at)
        for e in events
        for g in c.feed(e)
    ]


def test_two_gauges_within_the_hour_raise_the_group() -> None:
    got = _run([_ev("A", "blue", 0), _ev("A", "yellow", H // 2), _ev("B", "orange", H)])
    assert got == [("east", "none", "orange", H, H)]


def test_entries_too_far_apart_do_not_count_and_leaving_clears() -> None:
    events = [_ev("A", "yellow", 0), _ev("B", "yellow", 2 * H), _ev("C", "yellow", 2 * H + 10)]
    assert _run(events) == [("east", "none", "orange", 2 * H + 10, 2 * H + 10)]
    events.append(_ev("C", "blue", 3 * H, previous="yellow"))
    assert _run(events)[1:] == [("east", "orange", "none", 3 * H, 2 * H + 10)]


def test_other_groups_and_rules_are_ignored() -> None:
    other = AlertEvent(
        fingerprint("rain", "B", "rainfall"), "rain", "B", "rainfall", "red", "none", "firing",
        0, 0, 1.0, 1.0, "",
    )  # fmt: skip
    assert _run([_ev("D", "red", 0), other, _ev("A", "yellow", 1)]) == []


def test_texts_name_the_group() -> None:
    c = Corroborator((RULE,))
    (g,) = [g for e in (_ev("A", "yellow", 0), _ev("B", "yellow", 1)) for g in c.feed(e)]
    assert g.summary == "east: 2 gauges at yellow or above"
    assert g.labels["group"] == "east"


def test_a_station_in_two_groups_feeds_both() -> None:
    rule = CorroborationRule(
        rule_id="r", source_rule="flood", min_level=Level.YELLOW, k=2,
        groups={"north": ("A", "B"), "city": ("B", "C")}, within_ms=H, level=Level.ORANGE,
        for_ms=0, summary="{basin}", resolved_summary="{basin}: all clear",
    )  # fmt: skip
    c = Corroborator((rule,))
    got = [g.station for e in (_ev("A", "yellow", 0), _ev("C", "yellow", 1)) for g in c.feed(e)]
    assert got == []
    assert [g.station for g in c.feed(_ev("B", "yellow", 2))] == ["north", "city"]


def test_entries_at_the_same_time_leave_one_by_one() -> None:
    # Equal entry times: leaving removes one of them, not both, and the group stays
    # raised while k remain.
    rule3 = dataclasses.replace(RULE, k=2, groups={"east": ("A", "B", "C")})
    events = [_ev("A", "yellow", H), _ev("B", "yellow", H), _ev("C", "yellow", H)]
    events.append(_ev("B", "blue", 2 * H, previous="yellow"))
    c = Corroborator((rule3,))
    got = [(g.level, g.at) for e in events for g in c.feed(e)]
    assert got == [("orange", H)]
    cleared = c.feed(_ev("A", "blue", 3 * H, previous="yellow"))
    assert [(g.level, g.at, g.value) for g in cleared] == [("none", 3 * H, 1.0)]


def test_a_station_event_sent_again_after_a_failover_is_not_taken_twice() -> None:
    # A worker replaying A's partition sends A's entry again after A has left, before
    # B's: taking it would count A with B and raise the group, although A had left
    # before B came.
    entry, leave = _ev("A", "yellow", H), _ev("A", "blue", H + 600_000, previous="yellow")
    events = [entry, leave, entry, _ev("B", "yellow", H + 1_800_000), leave]
    assert _run(events) == []


def test_a_reload_that_raises_min_level_still_lets_stations_leave() -> None:
    c = Corroborator((RULE,))
    raised = [g.level for e in (_ev("A", "yellow", 0), _ev("B", "yellow", 1)) for g in c.feed(e)]
    assert raised == ["orange"]
    c.rules = {RULE.rule_id: dataclasses.replace(RULE, min_level=Level.ORANGE)}
    # yellow -> blue crosses no orange line, but it takes the stations out.
    leave = [_ev("A", "blue", H, previous="yellow"), _ev("B", "blue", H + 1, previous="yellow")]
    assert [(g.level, g.at) for e in leave for g in c.feed(e)] == [("none", H)]


class _FlakyTopic:
    """A corroboration topic whose next ``fail`` sends raise, as while a broker restarts."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.sent: list[tuple[int, bytes]] = []

    def get_topic_name(self) -> str:
        return "corr"

    async def send(self, *, value: bytes, partition: int) -> asyncio.Future[None]:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("broker restarting")
        self.sent.append((partition, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def test_routed_events_after_a_failed_send_wait_behind_it_and_flush_keeps_order() -> None:
    stage = object.__new__(CorroborationStage)  # route/flush only: no Faust app
    topic = _FlakyTopic(fail=1)

    async def hand_over(records: list[Outgoing]) -> list[asyncio.Future[None]]:
        return [await topic.send(value=r.value, partition=r.partition or 0) for r in records]

    stage.topology = types.SimpleNamespace(  # type: ignore[assignment]
        ruleset=types.SimpleNamespace(corroboration=(RULE,)),
        partition_for=lambda key: 3,
        hand_over=hand_over,
    )
    stage.topic = topic  # type: ignore[assignment]
    stage._init_state()
    stage.topology.partitions = 4  # type: ignore[attr-defined]

    async def scenario() -> None:
        await stage.route([_ev("A", "yellow", 1)])  # the send fails: deferred
        await stage.route([_ev("B", "yellow", 2)])  # same partition: waits behind it
        assert topic.sent == []
        await stage.flush()

    asyncio.run(scenario())
    stations = [AlertEvent.from_json(v.split(b"\x1e", 1)[1]).station for _, v in topic.sent]
    assert stations == ["A", "B"] and {p for p, _ in topic.sent} == {3}
    assert stage._in_flight == [] and stage._deferred == set()

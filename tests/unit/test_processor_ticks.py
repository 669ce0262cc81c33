"""Silence on the wall clock (issue 10, item 9): ticks in a partition's log carry the
wall clock; a partition that gets no readings finds its silent gauges from them, and
nothing else (windows, levels) moves on wall time."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch, Tick
from engine.contracts.ruleset import RuleSet, ThresholdRule
from engine.evaluation.processor import PartitionProcessor

M = 60_000
WALL = 1_790_000_000_000  # the gateway's wall clock at the first tick (ms)
EVERY = 5_000  # ms between ticks


def _rules(aggregate: str = "max") -> RuleSet:
    thresholds = np.array([[1.0, 2.0, 3.0, 4.0]] * 2)
    return RuleSet((
        ThresholdRule("flood", "water_level", ("A", "B"), thresholds, window_ms=15 * M,
                      aggregate=aggregate, stale_ms=30 * M),  # type: ignore[arg-type]
    ))  # fmt: skip


def _readings(rows: list[tuple[str, int, float]]) -> TelemetryBatch:
    return TelemetryBatch.from_rows([(s, "water_level", t, v) for s, t, v in rows])


def _tick(wall_ms: int) -> TelemetryBatch:
    return TelemetryBatch.of_tick(Tick(wall_ms, EVERY))


class Feed:
    """A processor fed at consecutive offsets, as the topology does."""

    def __init__(self, proc: PartitionProcessor) -> None:
        self.proc = proc
        self.offset = 0

    def __call__(self, batch: TelemetryBatch) -> list[AlertEvent]:
        events = self.proc.process(batch, self.offset)
        self.offset += 1
        return events

    def ticks(self, start_ms: int, n: int) -> list[AlertEvent]:
        return [e for k in range(n) for e in self(_tick(start_ms + k * EVERY))]


def _brief(events: list[AlertEvent]) -> list[tuple[str, str, str, int, int]]:
    return [(e.rule_id, e.station, e.state, e.at, e.started_at) for e in events]


@pytest.mark.parametrize("aggregate", ["max", "mean"])  # the two runners
def test_a_partition_without_readings_finds_its_silent_gauges_on_the_wall_clock(
    aggregate: str,
) -> None:
    feed = Feed(PartitionProcessor(_rules(aggregate), lateness_ms=0))
    feed(_readings([("A", 0, 2.5), ("B", 2 * M, 0.5)]))
    # Event time stands at 2 min. 28 min of wall time after the first tick (which starts
    # the count), A is due at the last tick, B (2 min later) is not yet.
    n = 28 * M // EVERY
    events = feed.ticks(WALL, n)
    assert events == []
    events = feed.ticks(WALL + n * EVERY, 1)
    assert _brief(events) == [("flood#silent", "A", "firing", 30 * M, 0)]
    events = feed.ticks(WALL + (n + 1) * EVERY, 2 * M // EVERY)
    assert _brief(events) == [("flood#silent", "B", "firing", 32 * M, 2 * M)]
    assert feed.ticks(WALL + 40 * M, 100) == []  # reported once
    # A reading clears A's silence as it always did, dated at the reading.
    events = feed(_readings([("A", 60 * M, 0.5)]))
    assert ("flood#silent", "A", "resolved", 60 * M, 0) in _brief(events)


def test_a_backlog_ends_a_wall_clock_silence_no_earlier_than_it_began() -> None:
    """Raised on the wall clock while the device buffered; its backlog's first reading is
    older than the silence's own time: the all-clear is not dated before the alert."""
    feed = Feed(PartitionProcessor(_rules(), lateness_ms=0))
    feed(_readings([("A", 0, 0.5)]))
    fired = feed.ticks(WALL, 30 * M // EVERY + 1)
    assert _brief(fired) == [("flood#silent", "A", "firing", 30 * M, 0)]
    backlog = feed(_readings([("A", 5 * M, 0.5), ("A", 35 * M, 0.5)]))
    assert ("flood#silent", "A", "resolved", 30 * M, 0) in _brief(backlog)


def test_ticks_close_no_window_and_change_no_level() -> None:
    # The mean rule changes level only when a window closes: an hour of ticks closes
    # none, the next reading past the window's end does.
    feed = Feed(PartitionProcessor(_rules("mean"), lateness_ms=0))
    feed(_readings([("A", 0, 2.5)]))
    events = feed.ticks(WALL, 60 * M // EVERY)
    assert {e.rule_id for e in events} == {"flood#silent"}
    events = feed(_readings([("A", 16 * M, 2.5)]))
    assert ("flood", "A", "firing", 15 * M, 15 * M) in _brief(events)
    # The early-firing rule: a level raised by a reading does not clear without one.
    feed = Feed(PartitionProcessor(_rules("max"), lateness_ms=0))
    assert _brief(feed(_readings([("A", 0, 2.5)]))) == [("flood", "A", "firing", 0, 0)]
    assert {e.rule_id for e in feed.ticks(WALL, 60 * M // EVERY)} == {"flood#silent"}
    assert feed.proc.watermark == 0


def test_idle_time_counts_from_the_last_reading_that_moved_event_time() -> None:
    feed = Feed(PartitionProcessor(_rules(), lateness_ms=0))
    feed(_readings([("A", 0, 0.5), ("B", 0, 0.5)]))
    # B reports every 5 min of event time, one tick interval apart: A goes silent on
    # event time as before; B, reporting, never does.
    events: list[AlertEvent] = []
    for k in range(1, 20):
        events += feed(_readings([("B", k * 5 * M, 0.5)]))
        events += feed.ticks(WALL + k * EVERY, 1)
    assert _brief(events) == [("flood#silent", "A", "firing", 30 * M, 0)]


def test_a_gap_between_ticks_counts_at_most_two_intervals() -> None:
    # The gateway was down for an hour: that is not time the partition was watched
    # (the broker holds what the devices sent meanwhile), so no gauge is silent at once.
    feed = Feed(PartitionProcessor(_rules(), lateness_ms=0))
    feed(_readings([("A", 0, 0.5)]))
    assert feed.ticks(WALL, 2) == []
    assert feed(_tick(WALL + 60 * M)) == []
    assert feed.proc.idle.idle_ms == 3 * EVERY
    # A clock set back counts nothing.
    assert feed(_tick(WALL)) == [] and feed.proc.idle.idle_ms == 3 * EVERY


def test_idle_time_survives_a_checkpoint() -> None:
    feed = Feed(PartitionProcessor(_rules(), lateness_ms=0))
    feed(_readings([("A", 0, 0.5)]))
    feed.ticks(WALL, 20 * M // EVERY)
    again = Feed(PartitionProcessor(_rules(), lateness_ms=0))
    again.proc.restore(feed.proc.snapshot())
    again.offset = feed.offset
    assert again.proc.idle.idle_ms == feed.proc.idle.idle_ms > 0
    events = again.ticks(WALL + 20 * M, 10 * M // EVERY + 1)
    assert _brief(events) == [("flood#silent", "A", "firing", 30 * M, 0)]


def test_a_checkpoint_from_before_ticks_loads() -> None:
    import msgpack

    proc = PartitionProcessor(_rules(), lateness_ms=0)
    proc.process(_readings([("A", 0, 0.5)]), 0)
    old = msgpack.unpackb(proc.snapshot())
    del old["idle"]
    restored = PartitionProcessor(_rules(), lateness_ms=0)
    restored.restore(msgpack.packb(old))
    assert restored.idle.snapshot() == [None, 0, None]


@st.composite
def live_feed(draw: st.DrawFn) -> list[TelemetryBatch]:
    """Readings of two gauges in event-time batches, with ticks between them."""
    out: list[TelemetryBatch] = []
    t, wall = 0, WALL
    for _ in range(draw(st.integers(1, 12))):
        n = draw(st.integers(1, 4))
        rows = []
        for _ in range(n):
            t += draw(st.integers(0, 20)) * M
            rows.append((draw(st.sampled_from("AB")), t, draw(st.sampled_from([0.5, 1.5, 2.5]))))
        out.append(_readings(rows))
        for _ in range(draw(st.integers(0, 5))):
            wall += draw(st.integers(0, 3)) * 10 * M
            out.append(TelemetryBatch.of_tick(Tick(wall, 10 * M)))
    return out


@settings(max_examples=60, deadline=None)
@given(batches=live_feed(), aggregate=st.sampled_from(["max", "mean"]))
def test_ticks_add_silence_alerts_and_nothing_else(
    batches: list[TelemetryBatch], aggregate: str
) -> None:
    """With ticks, the level events are those of the readings alone (a replay, which has
    no ticks); ticks only raise silences, each dated ``stale`` after its gauge's last
    reading, and cleared by the gauge's next reading."""
    with_ticks = Feed(PartitionProcessor(_rules(aggregate), lateness_ms=0))
    alone = Feed(PartitionProcessor(_rules(aggregate), lateness_ms=0))
    live: list[AlertEvent] = []
    replayed: list[AlertEvent] = []
    last: dict[str, int] = {}
    silent: set[str] = set()
    for batch in batches:
        events = with_ticks(batch)
        live += events
        if batch.tick is None:
            replayed += alone(batch)
        for station, _, ts, _, _ in batch.rows():
            last[station] = max(last.get(station, ts), ts)
        for e in events:
            if e.rule_id != "flood#silent":
                continue
            if e.state == "firing":
                assert e.station not in silent
                assert (e.started_at, e.at) == (last[e.station], last[e.station] + 30 * M)
                silent.add(e.station)
            else:
                assert batch.tick is None, "a tick cleared a silence"
                silent.remove(e.station)

    def levels(events: list[AlertEvent]) -> list[str]:
        return [e.to_json() for e in events if e.rule_id == "flood"]

    assert levels(live) == levels(replayed)

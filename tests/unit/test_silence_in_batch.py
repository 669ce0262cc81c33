"""A gauge's silence is found wherever it falls, whatever the batching: a gap inside one
batch (a replay's 10,000 readings, a broker's backlog after a restart) raises and clears
the silence that batches of one reading raise (issue 10: the replay judged silence only
at batch ends, so a gap inside a batch was never seen)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contracts.alerts import AlertEvent
from engine.contracts.ruleset import DerivedMetric, RuleSet, ThresholdRule
from engine.evaluation.kernels import health as hk
from engine.evaluation.kernels._common import NO_TS
from engine.tools.replay import replay

S = 1_000
T0 = 1_719_763_200_000
STALE = 30 * S
#: The early-firing kernel (max) and the window chain (mean) judge silence apart.
AGGREGATES = ["max", "mean"]


def _rule(stations: list[str], aggregate: str) -> ThresholdRule:
    thresholds = np.array([[3.0, 4.0, 4.5, 5.0]] * len(stations), np.float64)
    return ThresholdRule("flood", "water_level", tuple(stations), thresholds,
                         window_ms=60 * S, aggregate=aggregate,  # type: ignore[arg-type]
                         stale_ms=STALE)  # fmt: skip


def _key(e: AlertEvent) -> tuple[object, ...]:
    return (e.rule_id, e.station, e.labels.get("health", ""), e.previous_level, e.level,
            e.state, e.at, e.started_at)  # fmt: skip


def _silences(events: list[AlertEvent]) -> list[tuple[object, ...]]:
    return sorted((_key(e) for e in events if e.labels.get("health") == "silent"),
                  key=lambda k: (k[6], k[5] != "firing", k))  # fmt: skip


@pytest.mark.parametrize("aggregate", AGGREGATES)
def test_a_gap_inside_one_batch_raises_and_clears_the_silence(aggregate: str) -> None:
    """G1 is quiet for 50 s while G2 and G3 report every 10 s: a replay in one batch
    raises G1's silence at its last reading + 30 s and clears it at its next reading,
    as a replay reading by reading does."""
    readings = []
    for k in range(12):
        t = T0 + k * 10 * S
        for station in ("G1", "G2", "G3"):
            if station != "G1" or not 3 <= k <= 7:
                readings.append((station, "water_level", t, 2.0))
    ruleset = RuleSet((_rule(["G1", "G2", "G3"], aggregate),))
    one_batch = _silences(replay(ruleset, readings, batch_size=10_000))
    assert [(k[1], k[5], k[6]) for k in one_batch] == [
        ("G1", "firing", T0 + 20 * S + STALE),
        ("G1", "resolved", T0 + 80 * S),
    ]
    assert one_batch == _silences(replay(ruleset, readings, batch_size=1))


gap = st.integers(1, 50).map(lambda s: s * S)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["A", "B", "C"]), gap, st.floats(0, 6)), max_size=60),
    st.sampled_from(AGGREGATES),
    st.sampled_from([2, 5, 10_000]),
)
def test_every_event_is_the_same_in_any_batching(
    steps: list[tuple[str, int, float]], aggregate: str, batch_size: int
) -> None:
    """Readings of three gauges, each after a random gap of up to 50 s (silence 30 s), in
    event-time order: the events, health ones included, do not depend on batch size."""
    t = T0
    readings = []
    for station, dt, value in steps:
        t += dt
        readings.append((station, "water_level", t, value))
    ruleset = RuleSet((_rule(["A", "B", "C"], aggregate),))
    want = sorted(map(_key, replay(ruleset, readings, batch_size=1)))
    assert sorted(map(_key, replay(ruleset, readings, batch_size=batch_size))) == want


def test_prior_times_is_the_latest_time_before_each_reading_in_event_time_order() -> None:
    ts = np.array([5, 1, 3, 3, 9], np.int64)
    every = np.ones(5, np.bool_)
    # In stable event-time order 1, 3, 3, 5, 9: the second 3 follows the first.
    assert hk.prior_times(ts, every, NO_TS).tolist() == [3, NO_TS, 1, 3, 5]
    assert hk.prior_times(ts, every, 4).tolist() == [4, 4, 4, 4, 5]
    past_clock = np.array([False, True, True, True, False])  # 5 and 9 move nothing
    assert hk.prior_times(ts, past_clock, NO_TS).tolist() == [3, NO_TS, 1, 3, 3]
    moved = np.array([1, 3], np.int64)
    derived = np.array([3, 1, 7], np.int64)
    assert hk.prior_of_derived(derived, moved, NO_TS).tolist() == [1, NO_TS, 3]
    assert hk.prior_of_derived(derived, moved, 2).tolist() == [2, 2, 3]


@pytest.mark.parametrize("aggregate", AGGREGATES)
def test_a_derived_metrics_gap_inside_one_batch_raises_its_silence(aggregate: str) -> None:
    """A pressure head derived from A's pore pressure, while B reports: A quiet for 50 s
    inside one batch raises the head's silence as batches of one reading do (the derived
    readings' partition time is the raw batch's)."""
    thresholds = np.array([[300.0, 400.0, 450.0, 500.0]], np.float64)
    rules = tuple(
        ThresholdRule(f"r_{metric}", metric, (station,), thresholds, window_ms=60 * S,
                      aggregate=aggregate, stale_ms=STALE)  # type: ignore[arg-type]
        for metric, station in (("head", "A"), ("pore", "B"))
    )  # fmt: skip
    derived = DerivedMetric("ph", "head", "pressure_head", "pore", ("A",), np.array([100.0]))
    ruleset = RuleSet(rules, derived=(derived,))
    readings = []
    for k in range(12):
        t = T0 + k * 10 * S
        readings.append(("B", "pore", t, 1.0))
        if not 3 <= k <= 7:
            readings.append(("A", "pore", t, 1.0))
    one_batch = _silences(replay(ruleset, readings, batch_size=10_000))
    assert [(k[0], k[5], k[6]) for k in one_batch] == [
        ("r_head#silent", "firing", T0 + 20 * S + STALE),
        ("r_head#silent", "resolved", T0 + 80 * S),
    ]
    assert one_batch == _silences(replay(ruleset, readings, batch_size=1))


def test_a_reading_exactly_stale_after_the_last_one_is_judged_as_in_batches_of_one() -> None:
    """B's reading at A's last + stale comes before A's own at that time: batches of one
    raise A's silence and end it at the same ms; so does one batch."""
    readings = [("A", "water_level", T0, 1.0), ("B", "water_level", T0, 1.0),
                ("B", "water_level", T0 + STALE, 1.0), ("A", "water_level", T0 + STALE, 1.0),
                ("B", "water_level", T0 + STALE + 5 * S, 1.0)]  # fmt: skip
    for aggregate in AGGREGATES:
        ruleset = RuleSet((_rule(["A", "B"], aggregate),))
        one_batch = _silences(replay(ruleset, readings, batch_size=10_000))
        assert [(k[1], k[5], k[6]) for k in one_batch] == [
            ("A", "firing", T0 + STALE),
            ("A", "resolved", T0 + STALE),
        ]
        assert one_batch == _silences(replay(ruleset, readings, batch_size=1))

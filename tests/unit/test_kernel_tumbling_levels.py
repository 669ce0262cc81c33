"""The tumbling-window level kernel against its plain-Python reference, and the
processor's exactly-once offset handling and checkpoints."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.batch import TelemetryBatch
from engine.kernels import tumbling_levels as k
from engine.processor import PartitionProcessor
from engine.ruleset import RuleSet, ThresholdRule

WINDOW = 15 * 60_000
THRESHOLDS = np.array([[1.0, 2.0, 3.0, 4.0], [np.nan, 2.5, np.nan, 5.0], [-1.0, -2.0, -3.0, -4.0]])

reading = st.tuples(
    st.integers(0, 2),  # sensor
    st.integers(0, 40).map(lambda m: m * 60_000),  # minute, with duplicates and gaps
    st.one_of(st.floats(-6, 6, allow_nan=False), st.just(float("nan"))),
)


def _kernel(
    direction: int, deadband: float, readings: list[tuple[int, int, float]], for_ms: int = 0
) -> list:
    state = k.new_state(3)
    thr = THRESHOLDS * direction
    n = len(readings)
    out = (
        np.empty(2 * n, np.int32),
        np.empty(2 * n, np.int8),
        np.empty(2 * n, np.int8),
        np.empty(2 * n, np.int64),
        np.empty(2 * n, np.float64),
        np.empty(2 * n, np.float64),
    )
    sensor = np.array([r[0] for r in readings], np.int32)
    ts = np.array([r[1] for r in readings], np.int64)
    value = np.array([r[2] for r in readings], np.float64)
    m = k.process(state, thr, direction, deadband, WINDOW, for_ms, sensor, ts, value, *out)
    return [
        (int(out[0][j]), int(out[1][j]), int(out[2][j]), int(out[3][j]), float(out[4][j]))
        for j in range(m)
    ]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(reading, max_size=80),
    st.sampled_from([1, -1]),
    st.sampled_from([0.0, 0.3]),
    st.sampled_from([0, 120_000, 600_000]),
)
def test_kernel_matches_reference(
    readings: list, direction: int, deadband: float, for_ms: int
) -> None:
    expected = k.reference_process(
        [0, 0, 0], THRESHOLDS * direction, direction, deadband, WINDOW, readings, for_ms
    )
    assert _kernel(direction, deadband, readings, for_ms) == expected


def test_kernel_escalates_early_and_clears_at_window_close() -> None:
    readings = [
        (0, 0, 0.5),
        (0, 60_000, 2.2),
        (0, 120_000, 4.1),
        (0, WINDOW, 0.2),
        (0, 2 * WINDOW, 0.1),
    ]
    assert _kernel(1, 0.0, readings) == [
        (0, 0, 2, 60_000, 2.2),  # straight to yellow on the reading that crossed
        (0, 2, 4, 120_000, 4.1),
        # [0, 15 min) kept red (max 4.1); [15, 30 min) closes at its end, max 0.2: clear.
        (0, 4, 0, 2 * WINDOW, 0.2),
    ]


def test_deadband_holds_a_level_until_clearly_below() -> None:
    readings = [(0, 0, 2.1), (0, WINDOW, 1.9), (0, 2 * WINDOW, 1.5), (0, 3 * WINDOW, 1.0)]
    got = _kernel(1, 0.3, readings)
    # 1.9 is within 0.3 of yellow's 2.0: held. 1.5 is not: blue when [30, 45 min) ends.
    assert got == [(0, 0, 2, 0, 2.1), (0, 2, 1, 3 * WINDOW, 1.5)]


def test_for_duration_waits_for_an_unbroken_breach() -> None:
    m = 60_000
    readings = [(0, 0, 2.2), (0, 5 * m, 2.3), (0, 9 * m, 2.4), (0, 10 * m, 2.5), (0, 11 * m, 3.2)]
    # yellow (2.0) breached since 0: due at 10 min; orange (3.0) only since 11 min.
    assert _kernel(1, 0.0, readings, for_ms=10 * m) == [(0, 0, 2, 10 * m, 2.5)]
    # A new window whose first reading is below the line breaks the run.
    broken = [(0, 0, 2.2), (0, 9 * m, 2.2), (0, 15 * m, 0.5), (0, 16 * m, 2.2), (0, 25 * m, 2.2)]
    assert _kernel(1, 0.0, broken, for_ms=10 * m) == []
    assert _kernel(1, 0.0, [*broken, (0, 26 * m, 2.2)], for_ms=10 * m) == [(0, 0, 2, 26 * m, 2.2)]


def _rule() -> ThresholdRule:
    return ThresholdRule("flood", "water_level", ("A", "B"), THRESHOLDS[:2].copy())


def test_processor_skips_batches_it_already_applied_and_restores() -> None:
    rows = [("A", "water_level", i * 60_000, 0.5 + i * 0.1) for i in range(40)]
    proc = PartitionProcessor(RuleSet((_rule(),)), lateness_ms=0)
    first = proc.process(TelemetryBatch.from_rows(rows[:20]), offset=7)
    assert proc.process(TelemetryBatch.from_rows(rows[:20]), offset=7) == []
    snapshot = proc.snapshot()
    rest = proc.process(TelemetryBatch.from_rows(rows[20:]), offset=8)

    restored = PartitionProcessor(RuleSet((_rule(),)), lateness_ms=0)
    restored.restore(snapshot)
    assert restored.next_offset == 8
    assert restored.process(TelemetryBatch.from_rows(rows[:20]), offset=7) == []
    assert restored.process(TelemetryBatch.from_rows(rows[20:]), offset=8) == rest
    assert restored.accepted("flood", "A") == 40
    assert [e.level for e in first + rest] == ["blue", "yellow", "orange", "red"]


def test_reload_keeps_state_of_unchanged_rules_and_takes_new_thresholds() -> None:
    proc = PartitionProcessor(RuleSet((_rule(),)), lateness_ms=0)
    proc.process(TelemetryBatch.from_rows([("A", "water_level", 0, 1.5)]), 0)
    higher = ThresholdRule("flood", "water_level", ("A", "B"), THRESHOLDS[:2] + 10)
    proc.swap_rules(RuleSet((higher,)))
    assert proc.accepted("flood", "A") == 1
    events = proc.process(TelemetryBatch.from_rows([("A", "water_level", WINDOW, 1.6)]), 1)
    assert [(e.previous_level, e.level) for e in events] == [("blue", "none")]

"""The early-firing kernel (QC, health, window, levels in one pass) against the plain
references of its steps, and the processor's exactly-once offset handling and
checkpoints."""

from __future__ import annotations

import itertools
import random

import msgpack
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.recfunctions import repack_fields

from engine.contracts.batch import TelemetryBatch
from engine.contracts.ruleset import RuleSet, ThresholdRule
from engine.evaluation.kernels import health as hk
from engine.evaluation.kernels import tumbling_levels as k
from engine.evaluation.kernels._common import (
    NO_TS,
    Q_FAIL,
    Q_GOOD,
    Q_MISSING,
    Q_SUSPECT,
    Q_UNCHECKED,
    TS_MAX,
)
from engine.evaluation.kernels.qc import QCParams, time_limits
from engine.evaluation.kernels.qc_reference import QCReference
from engine.evaluation.kernels.tumbling_levels_reference import reference_process
from engine.evaluation.processor import PartitionProcessor
from engine.evaluation.runners.tumbling import V3_FIELDS

WINDOW = 15 * 60_000
THRESHOLDS = np.array([[1.0, 2.0, 3.0, 4.0], [np.nan, 2.5, np.nan, 5.0], [-1.0, -2.0, -3.0, -4.0]])

reading = st.tuples(
    st.integers(0, 2),  # sensor
    st.integers(0, 40).map(lambda m: m * 60_000),  # minute, with duplicates and gaps
    st.one_of(st.floats(-6, 6, allow_nan=False), st.just(float("nan"))),
)
QC_OFF = (*[float("nan")] * 6, 0.0, 0, 0)


def _run(
    params: k.Params,
    readings: list[tuple[int, int, float]],
    quality: list[int] | None = None,
    thresholds: npt.NDArray[np.float64] = THRESHOLDS,
    limits: tuple[int, int, int] = (TS_MAX, NO_TS, NO_TS),
    state: npt.NDArray[np.void] | None = None,
) -> tuple[list[tuple[int, int, int, int, float]], list[tuple], list[int], npt.NDArray[np.void]]:
    """Level transitions (sensor, from, to, ms, aggregate), health changes and late rows."""
    if state is None:
        state = k.new_state(len(thresholds))
        k.set_thresholds(state, thresholds * params.direction)
    sensor = np.array([r[0] for r in readings], np.int32)
    ts = np.array([r[1] for r in readings], np.int64)
    value = np.array([r[2] for r in readings], np.float64)
    q = np.array(quality or [Q_UNCHECKED] * len(readings), np.uint8)
    out = k.outputs(len(readings))
    n_tr, n_hc, n_late = k.process(state, params, limits, sensor, ts, value, q, out)
    tr = [
        (int(s), int(f), int(t), int(at), float(v))
        for s, f, t, at, v in zip(*(a[:n_tr] for a in out[0][:5]), strict=True)
    ]
    hc = list(zip(*(a[:n_hc].tolist() for a in out[1]), strict=True))
    return tr, hc, out[2][0][:n_late].tolist(), state


def _nan_free(rows: list[tuple]) -> list[tuple]:
    """Rows comparable with ==: NaN (a silence's value) as None."""
    return [tuple(None if x != x else x for x in row) for row in rows]


def _kernel(
    direction: int,
    deadband: float,
    readings: list[tuple[int, int, float]],
    for_ms: int = 0,
    lateness_ms: int = 0,
) -> list:
    params = k.make_params(direction, deadband, WINDOW, for_ms, 3, QC_OFF, lateness_ms)
    return _run(params, readings)[0]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(reading, max_size=80),
    st.sampled_from([1, -1]),
    st.sampled_from([0.0, 0.3]),
    st.sampled_from([0, 120_000, 600_000]),
    st.sampled_from([0, 60_000, 10 * 60_000]),
    st.integers(0, 80),
    st.booleans(),
    st.sampled_from([0, 60_000, 7 * 60_000]),
    st.sampled_from([0, 1]),
)
def test_kernel_matches_reference(
    readings: list,
    direction: int,
    deadband: float,
    for_ms: int,
    lateness_ms: int,
    cut: int,
    on_reading: bool,
    shift_ms: int,
    right: int,
) -> None:
    """Readings in any order (out of order, duplicates, late): transitions and late
    rows as the plain reference states them, stepping down at window close or (``step_down:
    reading``) on the reading, windows aligned to the epoch or shifted."""
    late: list[int] = []
    expected = reference_process(
        [0, 0, 0], THRESHOLDS * direction, direction, deadband, WINDOW, readings, for_ms,
        lateness_ms, late, on_reading, shift_ms, right,
    )  # fmt: skip
    params = k.make_params(
        direction, deadband, WINDOW, for_ms, 3, QC_OFF, lateness_ms, on_reading=on_reading,
        shift_ms=shift_ms, right=right,
    )  # fmt: skip
    tr, _, late_rows, _ = _run(params, readings)
    assert (tr, late_rows) == (expected, late)
    # The state carries over between batches: any split gives the same transitions.
    first, _, _, state = _run(params, readings[:cut])
    assert first + _run(params, readings[cut:], state=state)[0] == expected
    # Closing reports the earliest window it left open, as a scan of the state finds it.
    tr = k.transition_arrays(3)
    closed, next_end = k.close_windows(state, params, cut * 60_000, tr)
    assert next_end == k.earliest_open_end(state, WINDOW, shift_ms)
    assert all(tr[2][j] < tr[1][j] for j in range(closed))  # closing only lowers a level


qc_reading = st.tuples(
    st.integers(0, 2),
    st.integers(0, 60).map(lambda m: m * 60_000),
    st.one_of(st.sampled_from([0.5, 1.0, 2.5, 3.5, 9.0, -9.0]), st.just(float("nan"))),
    st.sampled_from([Q_UNCHECKED, Q_GOOD, Q_SUSPECT, Q_FAIL, Q_MISSING]),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(qc_reading, max_size=80),
    st.sampled_from([1, -1]),
    st.sampled_from([0, 300_000]),
    st.sampled_from([(-8.0, 8.0), (float("nan"), float("nan"))]),
    st.sampled_from([float("nan"), 1.5]),
    st.sampled_from([0, 3]),
    st.integers(1, 4),
    st.sampled_from([0, 5 * 60_000]),
    st.integers(20, 70).map(lambda m: m * 60_000),
)
def test_one_pass_equals_qc_then_health_then_levels(
    readings: list,
    direction: int,
    for_ms: int,
    gross: tuple[float, float],
    spike: float,
    flat_n: int,
    fail_after: int,
    lateness_ms: int,
    now: int,
) -> None:
    """The fused kernel against QC's reference, the health kernel and the level
    reference applied one after the other, as the engine applied them before fusion."""
    qc = QCParams(*(np.full(3, x) for x in (*gross, np.nan, np.nan, spike, 2.0)),
                  flat_eps=0.0, flat_suspect_n=max(0, flat_n - 1), flat_fail_n=flat_n,
                  future_ms=5 * 60_000, max_age_ms=50 * 60_000)  # fmt: skip
    params = k.make_params(
        direction, 0.3, WINDOW, for_ms, fail_after,
        (gross[0], gross[1], np.nan, np.nan, spike, 2.0, 0.0, qc.flat_suspect_n, flat_n),
        lateness_ms,
    )  # fmt: skip
    rows = [(s, t, v) for s, t, v, _ in readings]
    limits = (*time_limits(qc, now), NO_TS)
    tr, hc, late, state = _run(params, rows, [r[3] for r in readings], limits=limits)

    sensor = np.array([r[0] for r in rows], np.int32)
    ts = np.array([r[1] for r in rows], np.int64)
    value = np.array([r[2] for r in rows], np.float64)
    flags = QCReference(qc).run(sensor.tolist(), ts.tolist(), value.tolist(), now,
                                [r[3] for r in readings])  # fmt: skip
    health = hk.new_health_state(3)
    changes = hk.observe(health, fail_after, sensor, ts, value, np.array(flags, np.uint8))
    assert _nan_free(hc) == _nan_free(list(zip(*(a.tolist() for a in changes), strict=True)))
    usable = [j for j, q in enumerate(flags) if q not in (Q_FAIL, Q_MISSING)]
    thr = THRESHOLDS * direction
    late_usable: list[int] = []
    taken = [rows[j] for j in usable]
    expected = reference_process(
        [0, 0, 0], thr, direction, 0.3, WINDOW, taken, for_ms, lateness_ms, late_usable
    )
    assert tr == expected
    assert late == [usable[j] for j in late_usable]
    # Silence, found by the watermark, against the health kernel's.
    due = k.silent_due(state, 10 * 60_000, 70 * 60_000)
    assert due.tolist() == hk.check_silence(health, 10 * 60_000, 70 * 60_000)[0].tolist()


def test_a_sensor_is_two_adjacent_cache_lines_of_which_89_bytes_are_state() -> None:
    state = k.new_state(1000)
    assert k.BLOCK_DTYPE.itemsize == 128 and state.ctypes.data % 128 == 0
    assert k.BLOCK_DTYPE.fields is not None and k.BLOCK_DTYPE.fields["levels"][1] == 63
    assert sum(k.BLOCK_DTYPE.fields[f][0].itemsize for f in k.STATE_FIELDS) == 89


def test_for_clocks_are_exact_up_to_their_cap() -> None:
    day = 86_400_000
    long = [(0, 0, 2.2), (0, k.AGE_CAP - 1, 2.3), (0, k.AGE_CAP, 2.4)]
    assert _kernel(1, 0.0, long, for_ms=k.AGE_CAP) == [(0, 0, 2, k.AGE_CAP, 2.4)]
    # A breach longer than the cap: the saturated clock is still past any allowed `for`.
    gap = [(1, 0, 2.6), (1, 400 * day, 5.5)]
    expected = reference_process([0, 0, 0], THRESHOLDS, 1, 0.0, WINDOW, gap, k.AGE_CAP)
    assert _kernel(1, 0.0, gap, for_ms=k.AGE_CAP) == expected == [(1, 0, 2, 400 * day, 5.5)]


def test_params_past_the_compact_fields_are_refused() -> None:
    with pytest.raises(ValueError, match=r"for_ms 4294967296 outside 0\.\.4294967295"):
        k.make_params(1, 0.0, WINDOW, k.AGE_CAP + 1, 3, QC_OFF)
    with pytest.raises(ValueError, match=r"fail_after 32 outside 1\.\.31"):
        k.make_params(1, 0.0, WINDOW, 0, 32, QC_OFF)


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
    # A dip inside a window that still ends above the line does not break the run: the
    # window [15, 30 min) holds yellow (max 2.2), so the run since 0 fires at 16 min.
    dip = [(0, 0, 2.2), (0, 9 * m, 2.2), (0, 15 * m, 0.5), (0, 16 * m, 2.2), (0, 25 * m, 2.2)]
    assert _kernel(1, 0.0, dip, for_ms=10 * m) == [(0, 0, 2, 16 * m, 2.2)]
    # A window that ends below the line does: [15, 30 min) holds 0.5 only, and the run
    # begins again at 30 min.
    broken = [(0, 0, 2.2), (0, 9 * m, 2.2), (0, 15 * m, 0.5), (0, 29 * m, 0.5), (0, 30 * m, 2.2),
              (0, 39 * m, 2.2)]  # fmt: skip
    assert _kernel(1, 0.0, broken, for_ms=10 * m) == []
    assert _kernel(1, 0.0, [*broken, (0, 40 * m, 2.2)], for_ms=10 * m) == [(0, 0, 2, 40 * m, 2.2)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 40).map(lambda m: m * 60_000), st.floats(-1, 5)),
        min_size=1,
        max_size=40,
        unique_by=lambda r: r[0],
    ),
    st.sampled_from([0, 5 * 60_000, 10 * 60_000, 20 * 60_000]),
    st.randoms(use_true_random=False),
)
def test_the_order_of_a_windows_readings_changes_nothing(
    series: list, for_ms: int, rnd: random.Random
) -> None:
    """Readings of one window may arrive in any order (a device's retry, a second
    path). What the kernel cannot do is take back an alert sent on the readings seen so
    far; what it guarantees, and the live-equals-replay comparison relies on
    (``tests.differential.compare``): every escalation of the time-ordered readings comes
    at that level or higher, never earlier and at most a window later; no escalation
    comes that the time-ordered readings do not raise; the level ends the same."""
    ordered = sorted(series)
    shuffled = []
    for _, group in itertools.groupby(ordered, key=lambda r: r[0] - r[0] % WINDOW):
        window = list(group)
        rnd.shuffle(window)
        shuffled += window
    expected = _kernel(1, 0.0, [(0, t, v) for t, v in ordered], for_ms=for_ms)
    got = _kernel(1, 0.0, [(0, t, v) for t, v in shuffled], for_ms=for_ms)

    def ups(trs: list) -> list:
        return [(to, at) for _, frm, to, at, _ in trs if to > frm]

    def covered(a: tuple, by: list, later: bool) -> bool:
        return any(
            c[0] >= a[0] and 0 <= (c[1] - a[1] if later else a[1] - c[1]) <= WINDOW for c in by
        )

    assert all(covered(e, ups(got), later=True) for e in ups(expected)), (expected, got)
    assert all(covered(g, ups(expected), later=False) for g in ups(got)), (expected, got)
    final = (expected[-1][2] if expected else 0, got[-1][2] if got else 0)
    assert final[0] == final[1], (expected, got)


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


def test_a_checkpoint_written_before_the_step_down_fields_restores() -> None:
    """A snapshot of the previous format (no ``fields``, no ``down_ts``/``down_from``)
    restores: the other fields as saved, no step-down remembered."""
    rows = [("A", "water_level", i * 60_000, 0.5 + i * 0.1) for i in range(20)]
    proc = PartitionProcessor(RuleSet((_rule(),)), lateness_ms=0)
    proc.process(TelemetryBatch.from_rows(rows[:10]), offset=0)
    data = msgpack.unpackb(proc.snapshot(), raw=False)
    saved = data["rules"]["flood"]
    assert saved.pop("fields") == list(k.STATE_FIELDS)
    current = np.frombuffer(saved["state"], repack_fields(k.BLOCK_DTYPE[list(k.STATE_FIELDS)]))
    saved["state"] = repack_fields(current[list(V3_FIELDS)]).tobytes()
    restored = PartitionProcessor(RuleSet((_rule(),)), lateness_ms=0)
    restored.restore(msgpack.packb(data, use_bin_type=True))
    batch = TelemetryBatch.from_rows(rows[10:])
    assert restored.process(batch, 1) == proc.process(batch, 1)
    assert restored.accepted("flood", "A") == 20


def test_reload_keeps_state_of_unchanged_rules_and_takes_new_thresholds() -> None:
    proc = PartitionProcessor(RuleSet((_rule(),)), lateness_ms=0)
    proc.process(TelemetryBatch.from_rows([("A", "water_level", 0, 1.5)]), 0)
    higher = ThresholdRule("flood", "water_level", ("A", "B"), THRESHOLDS[:2] + 10)
    proc.swap_rules(RuleSet((higher,)))
    assert proc.accepted("flood", "A") == 1
    events = proc.process(TelemetryBatch.from_rows([("A", "water_level", WINDOW, 1.6)]), 1)
    assert [(e.previous_level, e.level) for e in events] == [("blue", "none")]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 40).map(lambda m: m * 5 * 60_000 + 3_600_000), max_size=12),
    st.integers(0, 300).map(lambda m: m * 60_000),
)
def test_silence_ends_only_within_stale_of_the_partition_in_both_kernels(
    times: list[int], current_from: int
) -> None:
    """A silent sensor's backlog older than ``current_from`` leaves the silence and its
    start as they are, in the fused kernel as in the health kernel."""
    stale = 60 * 60_000
    state = k.new_state(1)
    k.set_thresholds(state, THRESHOLDS[:1])
    health = hk.new_health_state(1)
    first = [(0, 0, 1.0)]
    _run(k.make_params(1, 0.0, WINDOW, 0, 3, QC_OFF), first, thresholds=THRESHOLDS[:1],
         state=state)  # fmt: skip
    one = np.zeros(1, np.int32)
    hk.observe(health, 3, one, np.zeros(1, np.int64), np.ones(1), np.zeros(1, np.uint8))
    assert k.silent_due(state, stale, 3_600_000).tolist() == [0]
    assert hk.check_silence(health, stale, 3_600_000)[0].tolist() == [0]
    rows = [(0, t, 1.0) for t in sorted(times)]
    _, hc, _, _ = _run(k.make_params(1, 0.0, WINDOW, 0, 3, QC_OFF), rows,
                       thresholds=THRESHOLDS[:1], limits=(TS_MAX, NO_TS, current_from),
                       state=state)  # fmt: skip
    n = len(rows)
    changes = hk.observe(
        health, 3, np.zeros(n, np.int32), np.array([r[1] for r in rows], np.int64),
        np.ones(n), np.zeros(n, np.uint8), current_from,
    )  # fmt: skip
    assert _nan_free(hc) == _nan_free(list(zip(*(a.tolist() for a in changes), strict=True)))
    ended = [t for t in sorted(times) if t >= current_from][:1]
    assert [(c[3], c[4]) for c in hc] == [(t, 0) for t in ended]  # since: before the gap


def test_step_down_on_the_reading_starts_the_window_over() -> None:
    """``step_down: reading``: 2.5 raises level 2, 0.5 a minute later leaves it, and 1.5,
    in the same window but below its earlier maximum, raises level 1: the window starts
    over at the reading that stepped down. At window close nothing is lowered again."""
    rows = [(0, 0, 2.5), (0, 60_000, 0.5), (0, 120_000, 1.5), (0, WINDOW, 1.2)]
    expected = [(0, 0, 2, 0, 2.5), (0, 2, 0, 60_000, 0.5), (0, 0, 1, 120_000, 1.5)]
    params = k.make_params(1, 0.0, WINDOW, 0, 3, QC_OFF, on_reading=True)
    assert _run(params, rows)[0] == expected
    assert reference_process([0, 0, 0], THRESHOLDS, 1, 0.0, WINDOW, rows, on_reading=True) == (
        expected
    )

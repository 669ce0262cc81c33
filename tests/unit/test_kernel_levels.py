"""Level kernel: the rules on worked sequences, and differential tests vs the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.evaluation.kernels.levels import (
    LEVEL,
    LEVELS_STATE_DTYPE,
    RETURNED,
    SILENT,
    LevelParams,
    levels_check_silence,
    levels_evaluate,
    new_levels_state,
)
from engine.evaluation.kernels.levels_reference import LevelsReference, Row

MIN = 60_000


def _run(p: LevelParams, values: list[float], step: int = MIN) -> list[tuple[int, int, int]]:
    state = new_levels_state(1)
    n = len(values)
    tr = levels_evaluate(
        state, p, np.zeros(n, np.int64), np.arange(n, dtype=np.int64) * step, np.array(values)
    )
    return list(
        zip(tr.from_level.tolist(), tr.to_level.tolist(), (tr.ts // step).tolist(), strict=True)
    )


FLOOD = np.array([[11.0, 20.0, 20.0, 25.0]])


def test_escalation_skips_levels_with_equal_thresholds_and_deescalates_stepwise() -> None:
    p = LevelParams(FLOOD)
    # 20 ft is both flood (yellow) and moderate (orange): straight to orange
    assert _run(p, [5, 12, 21, 26, 22, 15, 10.9]) == [
        (0, 1, 1), (1, 3, 2), (3, 4, 3), (4, 3, 4), (3, 1, 5), (1, 0, 6)
    ]  # fmt: skip


def test_deadband_holds_the_level_until_back_past_threshold_minus_deadband() -> None:
    p = LevelParams(FLOOD, deadband=0.5)
    assert _run(p, [12, 10.6, 10.5, 11.2, 10.49]) == [(0, 1, 0), (1, 0, 4)]


def test_below_rules_and_unused_levels() -> None:
    p = LevelParams(np.array([[math.nan, 2.0, math.nan, 1.0]]), direction=-1)
    assert _run(p, [3.0, 1.5, 0.9, 2.5]) == [(0, 2, 1), (2, 4, 2), (4, 0, 3)]


def test_for_ms_requires_a_sustained_breach_per_level() -> None:
    p = LevelParams(FLOOD, for_ms=2 * MIN)
    # blue from t=1 (entered at t=3); red from t=4 but broken at t=5, again from t=6
    assert _run(p, [5, 12, 12, 12, 26, 21, 26, 26, 26]) == [
        (0, 1, 3), (1, 3, 6), (3, 4, 8)
    ]  # fmt: skip


def test_silence_and_return() -> None:
    p = LevelParams(np.repeat(FLOOD, 3, axis=0), stale_ms=30 * MIN)
    state = new_levels_state(3)
    levels_evaluate(state, p, np.array([0, 1]), np.array([0, 10 * MIN]), np.array([12.0, 1.0]))
    out = levels_check_silence(state, p, 35 * MIN)
    assert out.sensor.tolist() == [0]
    assert out.kind.tolist() == [SILENT]
    assert out.ts.tolist() == [30 * MIN]
    assert out.to_level.tolist() == [1]
    assert len(levels_check_silence(state, p, 36 * MIN).sensor) == 0  # reported once
    back = levels_evaluate(state, p, np.array([0]), np.array([40 * MIN]), np.array([5.0]))
    assert back.kind.tolist() == [RETURNED, LEVEL]
    assert back.to_level.tolist() == [1, 0]


def test_params_are_checked() -> None:
    with pytest.raises(ValueError, match=r"thresholds must have shape \(n, 4\), got \(1, 3\)"):
        LevelParams(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="direction must be"):
        LevelParams(FLOOD, direction=0)


def test_bad_sensor_index_and_shape_are_refused() -> None:
    state = new_levels_state(2)
    one = np.ones(1)
    with pytest.raises(IndexError, match="levels_evaluate: sensor index 2 outside the state of 2"):
        levels_evaluate(state, LevelParams(np.repeat(FLOOD, 2, axis=0)), np.array([2]), one, one)
    with pytest.raises(ValueError, match="levels_evaluate: 1 threshold rows for 2 sensors"):
        levels_evaluate(state, LevelParams(FLOOD), np.array([0]), one.astype(np.int64), one)


def test_state_is_42_bytes_per_sensor() -> None:
    assert LEVELS_STATE_DTYPE.itemsize == 42


@st.composite
def level_cases(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    n = 3
    rows = []
    for _ in range(n):
        thr = sorted(
            draw(st.lists(st.sampled_from([1.0, 2.0, 2.0, 3.0, 5.0]), min_size=4, max_size=4))
        )
        rows.append([math.nan if draw(st.integers(0, 5)) == 0 else x for x in thr])
    direction = draw(st.sampled_from([1, -1]))
    th = np.array(rows) * direction
    p = LevelParams(
        th,
        direction=direction,
        deadband=draw(st.sampled_from([0.0, 0.25, 1.0])),
        for_ms=draw(st.sampled_from([0, MIN, 3 * MIN])),
        stale_ms=draw(st.sampled_from([0, 5 * MIN])),
    )
    value = st.one_of(
        st.sampled_from([0.0, 1.0, 2.0, 2.75, 3.0, 5.0, 6.0, math.nan]).map(
            lambda v: v * direction
        ),
        st.floats(-7, 7),
    )
    ops = []
    t = 0
    for _ in range(draw(st.integers(1, 8))):
        evs = []
        for _ in range(draw(st.integers(0, 12))):
            t += draw(st.sampled_from([0, 0, MIN, MIN, 2 * MIN, 7 * MIN, -MIN]))  # out of order too
            evs.append((draw(st.integers(0, n - 1)), t, draw(value)))
        ops.append((evs, t + draw(st.sampled_from([0, 3 * MIN, 10 * MIN]))))
    return p, ops


def _rows(tr) -> list[Row]:  # type: ignore[no-untyped-def]
    return list(zip(*(a.tolist() for a in tr), strict=True))


def _same(got: list[Row], want: list[Row]) -> None:
    def key(r: Row) -> tuple[object, ...]:
        return tuple("nan" if isinstance(x, float) and math.isnan(x) else x for x in r)

    assert [key(r) for r in got] == [key(r) for r in want]


@settings(max_examples=100, deadline=None)
@given(level_cases())
def test_kernel_matches_reference(case) -> None:  # type: ignore[no-untyped-def]
    p, ops = case
    state = new_levels_state(3)
    ref = LevelsReference(p)
    for evs, now in ops:
        s = np.array([e[0] for e in evs], dtype=np.int64)
        t = np.array([e[1] for e in evs], dtype=np.int64)
        v = np.array([e[2] for e in evs], dtype=np.float64)
        _same(
            _rows(levels_evaluate(state, p, s, t, v)),
            ref.evaluate(s.tolist(), t.tolist(), v.tolist()),
        )
        _same(_rows(levels_check_silence(state, p, now)), ref.check_silence(now))
    for sensor, st_ in ref.sensors.items():
        assert state["level"][sensor] == st_.level

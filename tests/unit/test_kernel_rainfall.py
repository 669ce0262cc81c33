"""Rainfall accumulations: a worked storm, and a differential test against sums computed
from every accepted reading."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.evaluation.kernels.rainfall import (
    RainSpec,
    new_rain_state,
    rain_close_until,
    rain_update,
)
from engine.evaluation.kernels.windows import END_OF_INPUT
from engine.evaluation.kernels.windows_reference import WindowsReference

H = 3_600_000
T0 = 1_700_000_000_000 // H * H


def _add(state, spec, rows, q=None, wm=None):  # type: ignore[no-untyped-def]
    return rain_update(
        state,
        spec,
        np.array([r[0] for r in rows], dtype=np.uint32),
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.float64),
        np.ones(len(rows), np.uint8) if q is None else np.array(q, np.uint8),
        wm,
    ).tolist()


def test_storm_accumulations() -> None:
    spec = RainSpec()
    state = new_rain_state(2, spec)
    # 5-min reports: 2 mm each in hour 0, 1 mm each in hour 2; gauge 1 reports once
    rows = [(0, T0 + i * 300_000, 2.0) for i in range(12)]
    rows += [(0, T0 + 2 * H + i * 300_000, 1.0) for i in range(12)] + [(1, T0 + 5, 0.5)]
    # gauge 0's own readings close its hours 0 and 1 as they pass them
    assert _add(state, spec, rows) == [0] * 25
    # then both are silent: the watermark closes the hour of each one's newest reading
    out = rain_close_until(state, spec, T0 + 3 * H)
    assert out.sensor.tolist() == [0, 1, 0, 0]
    assert out.hour_end.tolist() == [T0 + H, T0 + H, T0 + 2 * H, T0 + 3 * H]
    assert out.acc_mm.tolist() == [
        [24.0, 24.0, 24.0, 24.0],
        [0.5, 0.5, 0.5, 0.5],
        [0.0, 24.0, 24.0, 24.0],  # hour 1 (dry)
        [12.0, 36.0, 36.0, 36.0],
    ]
    # the 24-h tails close at the end of the input: nothing is left 24 h after the rain
    tail = rain_close_until(state, spec, END_OF_INPUT)
    assert tail.hour_end.max() == T0 + 26 * H
    assert (
        tail.acc_mm[tail.sensor == 1].tolist()
        == [[0.0, 0.5, 0.5, 0.5]] * 2 + [[0.0, 0.0, 0.5, 0.5]] * 3 + [[0.0, 0.0, 0.0, 0.5]] * 18
    )


@st.composite
def rain_cases(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    spec = RainSpec(
        spans=draw(st.sampled_from([(1, 3, 6, 24), (1, 2), (2, 5)])),
        bucket_ms=draw(st.sampled_from([H, 600_000])),
        lateness_ms=draw(st.sampled_from([0, H // 2])),
    )
    b = spec.bucket_ms
    steps, wm = [], T0
    for _ in range(draw(st.integers(1, 6))):
        off = st.integers(-8, 4).map(lambda x, w=wm: w + x * b // 4)
        val = st.one_of(st.sampled_from([0.0, 0.5, 2.0, math.nan]), st.floats(0, 50))
        rows = draw(st.lists(st.tuples(st.integers(0, 2), off, val), max_size=20))
        q = draw(st.lists(st.sampled_from([1, 3, 4]), min_size=len(rows), max_size=len(rows)))
        wm += draw(st.sampled_from([0, b, 2 * b, 30 * b]))
        steps.append((rows, q, wm))
    return spec, steps


@settings(max_examples=60, deadline=None)
@given(rain_cases())
def test_kernel_matches_sums_over_accepted_readings(case) -> None:  # type: ignore[no-untyped-def]
    spec, steps = case
    state = new_rain_state(3, spec)
    ref = WindowsReference(spec.window, spec.spans)
    for rows, q, wm in steps:
        codes = _add(state, spec, rows, q, wm)
        assert codes == ref.update(
            [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], q, wm
        )
        got = rain_close_until(state, spec, wm)
        want = [(s, end, sums) for s, end, _, _, sums in ref.close_until(wm)]
        assert got.sensor.tolist() == [w[0] for w in want]
        assert got.hour_end.tolist() == [w[1] for w in want]
        np.testing.assert_allclose(
            got.acc_mm.reshape(-1, len(spec.spans)),
            np.array([w[2] for w in want]).reshape(-1, len(spec.spans)),
            rtol=1e-9,
            atol=1e-9,
        )

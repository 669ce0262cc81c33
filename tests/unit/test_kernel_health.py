"""Sensor-health kernel against a plain statement of its contract."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.evaluation.kernels import health as hk
from engine.evaluation.kernels._common import NO_TS, Q_FAIL, Q_GOOD

reading = st.tuples(st.integers(0, 2), st.integers(0, 50), st.sampled_from([Q_GOOD, Q_FAIL]))


def _reference(readings: list[tuple[int, int, int]], fail_after: int) -> list[tuple]:
    last: dict[int, int] = {}
    run: dict[int, int] = {}
    since: dict[int, int] = {}
    alert: set[int] = set()
    out = []
    for i, t, q in readings:
        last[i] = max(last.get(i, NO_TS), t)
        if q == Q_FAIL:
            if run.get(i, 0) == 0:
                since[i] = t
            run[i] = run.get(i, 0) + 1
            if run[i] >= fail_after and i not in alert:
                alert.add(i)
                out.append((i, hk.QC, 1, t, since[i]))
        else:
            run[i] = 0
            if i in alert:
                alert.remove(i)
                out.append((i, hk.QC, 0, t, since[i]))
    return out


@settings(max_examples=100, deadline=None)
@given(st.lists(reading, max_size=60), st.integers(1, 4))
def test_kernel_qc_runs_match_reference(readings: list, fail_after: int) -> None:
    state = hk.new_health_state(3)
    sensor = np.array([r[0] for r in readings], np.int32)
    ts = np.array([r[1] for r in readings], np.int64)
    flags = np.array([r[2] for r in readings], np.uint8)
    s, k, f, t, since, _ = hk.observe(state, fail_after, sensor, ts, np.zeros(len(ts)), flags)
    got = list(zip(s.tolist(), k.tolist(), f.tolist(), t.tolist(), since.tolist(), strict=True))
    assert got == _reference(readings, fail_after)


def test_kernel_silence_fires_once_and_clears_on_the_next_reading() -> None:
    state = hk.new_health_state(2)
    hk.observe(state, 3, np.array([0, 1], np.int32), np.array([1000, 5000], np.int64),
               np.zeros(2), np.array([Q_GOOD, Q_GOOD], np.uint8))  # fmt: skip
    s, _, firing, at, since, _ = hk.check_silence(state, stale_ms=3000, watermark=5000)
    assert (s.tolist(), firing.tolist(), at.tolist(), since.tolist()) == ([0], [1], [4000], [1000])
    assert len(hk.check_silence(state, 3000, 9000)[0]) == 1  # sensor 1 now; 0 not again
    s, k, firing, at, _, _ = hk.observe(
        state, 3, np.array([0], np.int32), np.array([9500], np.int64), np.zeros(1),
        np.array([Q_GOOD], np.uint8),
    )  # fmt: skip
    assert (s.tolist(), k.tolist(), firing.tolist(), at.tolist()) == ([0], [hk.SILENT], [0], [9500])

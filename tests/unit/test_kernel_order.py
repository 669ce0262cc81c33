"""The per-sensor order kernel against a plain loop."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.kernels._common import NO_TS
from engine.kernels.order import fresh


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 20)), max_size=50))
def test_kernel_keeps_only_readings_newer_than_their_sensors_last(rows: list) -> None:
    last = np.full(4, NO_TS, np.int64)
    sensor = np.array([r[0] for r in rows], np.int32)
    ts = np.array([r[1] for r in rows], np.int64)
    keep, dropped = fresh(last, sensor, ts)
    seen: dict[int, int] = {}
    expected = []
    for s, t in rows:
        expected.append(t > seen.get(s, NO_TS))
        seen[s] = max(seen.get(s, NO_TS), t)
    assert keep.tolist() == expected
    assert dropped == expected.count(False)
    assert all(last[s] == t for s, t in seen.items())

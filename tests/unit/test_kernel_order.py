"""The per-sensor reading identity kernel against a plain statement of its rule."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.evaluation.kernels import order


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 20)), max_size=60))
def test_repeats_dropped_readings_out_of_order_taken_older_ones_unknown(rows: list) -> None:
    recent = order.new_recent(4)
    sensor = np.array([r[0] for r in rows], np.int32)
    ts = np.array([r[1] for r in rows], np.int64)
    codes = order.taken(recent, sensor, ts).tolist()
    kept: dict[int, list[int]] = {}  # sensor -> its newest RECENT times taken
    expected = []
    for s, t in rows:
        times = kept.setdefault(s, [])
        if t in times:
            expected.append(order.REPEAT)
        elif len(times) == order.RECENT and t < min(times):
            expected.append(order.UNKNOWN)
        else:
            expected.append(order.NEW)
            times.append(t)
            times.sort(reverse=True)
            del times[order.RECENT :]
    assert codes == expected
    for s, times in kept.items():
        assert recent[s][: len(times)].tolist() == times


def test_a_reading_one_place_out_of_order_is_taken_and_its_repeat_is_not() -> None:
    recent = order.new_recent(1)
    s = np.zeros(1, np.int32)
    got = [int(order.taken(recent, s, np.array([t]))[0]) for t in (0, 10, 20, 5, 5, 30, 40)]
    assert got == [order.NEW, order.NEW, order.NEW, order.NEW, order.REPEAT, order.NEW, order.NEW]
    # 0 was pushed out by 40: a reading at 0 now cannot be told from its repeat.
    assert int(order.taken(recent, s, np.array([0]))[0]) == order.UNKNOWN

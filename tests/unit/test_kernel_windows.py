"""Window kernel: worked cases, and differential tests against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.evaluation.kernels.windows import (
    ACCEPTED,
    AGGREGATES,
    END_OF_INPUT,
    EXCLUDED,
    LATE,
    WindowSpec,
    new_window_state,
    window_close_until,
    window_update,
)
from engine.evaluation.kernels.windows_reference import WindowsReference

MIN = 60_000
T0 = 1_700_000_000_000 // (15 * MIN) * (15 * MIN)  # a window boundary
N = 3


def _upd(state, spec, rows, q=None, wm=None):  # type: ignore[no-untyped-def]
    s = np.array([r[0] for r in rows], dtype=np.uint32)
    t = np.array([r[1] for r in rows], dtype=np.int64)
    v = np.array([r[2] for r in rows], dtype=np.float64)
    qq = np.ones(len(rows), dtype=np.uint8) if q is None else np.array(q, dtype=np.uint8)
    return window_update(state, spec, s, t, v, qq, wm).tolist()


def test_late_within_lateness_updates_and_beyond_is_reported() -> None:
    spec = WindowSpec(bucket_ms=15 * MIN, aggregate="max", lateness_ms=5 * MIN)
    st_ = new_window_state(2, spec)
    assert _upd(st_, spec, [(0, T0 + MIN, 1.0), (1, T0 + 14 * MIN, 4.0)]) == [ACCEPTED] * 2
    # watermark passes the window end but not end + lateness: nothing closes
    assert len(window_close_until(st_, spec, T0 + 15 * MIN + 4 * MIN).sensor) == 0
    # a late reading still counts
    assert _upd(st_, spec, [(0, T0 + 2 * MIN, 7.0)]) == [ACCEPTED]
    out = window_close_until(st_, spec, T0 + 20 * MIN)
    assert out.sensor.tolist() == [0, 1]
    assert out.window_end.tolist() == [T0 + 15 * MIN] * 2
    assert out.value.tolist() == [7.0, 4.0]
    assert out.n_readings.tolist() == [2, 1]
    # the watermark closed it while sensor 0 was silent: its next reading of that window
    # (a buffered one, nothing of the sensor's being newer) reopens it
    assert _upd(st_, spec, [(0, T0 + 3 * MIN, 99.0)], wm=T0 + 20 * MIN) == [ACCEPTED]
    assert len(window_close_until(st_, spec, T0 + 24 * MIN).sensor) == 0  # heard at 20 min
    out = window_close_until(st_, spec, T0 + 25 * MIN)
    assert (out.sensor.tolist(), out.value.tolist(), out.n_readings.tolist()) == ([0], [99.0], [3])
    # once the sensor has a newer reading, a reading for that window is late: reported
    # back, not silently dropped
    assert _upd(st_, spec, [(0, T0 + 16 * MIN, 2.0), (0, T0 + 4 * MIN, 5.0)]) == [ACCEPTED, LATE]


def test_a_silence_from_mid_bucket_reopens_the_sliding_window_it_closed() -> None:
    spec = WindowSpec(bucket_ms=10 * MIN, aggregate="sum", buckets_per_window=3, lateness_ms=MIN)
    st_ = new_window_state(2, spec)
    H0 = T0 - T0 % (60 * MIN)  # an hour boundary
    _upd(st_, spec, [(0, H0 + k * 5 * MIN, 1.0) for k in range(5)], wm=H0 + 20 * MIN)
    # sensor 0 falls silent at 0:20 (its bucket 0:20-0:30 holds one reading of two);
    # sensor 1 moves event time on: the window ending 0:30 closes on what is known
    _upd(st_, spec, [(1, H0 + 60 * MIN, 0.0)])
    out = window_close_until(st_, spec, H0 + 60 * MIN)
    assert out.window_end[out.sensor == 0].tolist() == [H0 + k * 10 * MIN for k in (1, 2, 3)]
    assert out.value[out.sensor == 0].tolist() == [2.0, 4.0, 5.0]
    # its buffered 0:25 .. 0:55, uploaded at 1:00: the window ending 0:30 again, complete
    backlog = [(0, H0 + k * 5 * MIN, 3.0) for k in range(5, 12)]
    assert _upd(st_, spec, backlog, wm=H0 + 60 * MIN) == [ACCEPTED] * 7
    out = window_close_until(st_, spec, H0 + 60 * MIN)
    mine = zip(out.window_end[out.sensor == 0].tolist(), out.value[out.sensor == 0].tolist(),
               strict=True)  # fmt: skip
    # up to its own time less the lateness, 0:54: the windows ending 0:30, 0:40, 0:50
    assert list(mine) == [(H0 + 30 * MIN, 8.0), (H0 + 40 * MIN, 12.0), (H0 + 50 * MIN, 16.0)]


def test_silent_sensor_window_closes_and_failed_readings_are_excluded() -> None:
    spec = WindowSpec(bucket_ms=15 * MIN, aggregate="mean")
    st_ = new_window_state(2, spec)
    codes = _upd(st_, spec, [(0, T0, 1.0), (0, T0 + MIN, 100.0), (0, T0 + 2 * MIN, 3.0)], [1, 4, 3])
    assert codes == [ACCEPTED, EXCLUDED, ACCEPTED]
    assert _upd(st_, spec, [(1, T0 + 15 * MIN, 5.0)]) == [ACCEPTED]
    # sensor 0 sends nothing more; its window closes when the watermark moves on
    out = window_close_until(st_, spec, T0 + 15 * MIN)
    assert (out.sensor.tolist(), out.value.tolist()) == ([0], [2.0])
    # far ahead: sensor 1's own time closes its window first; nothing is refused
    assert _upd(st_, spec, [(1, T0 + 60 * MIN, 6.0)]) == [ACCEPTED]
    out = window_close_until(st_, spec, T0 + 60 * MIN)
    assert (out.sensor.tolist(), out.window_end.tolist()) == ([1], [T0 + 30 * MIN])


def test_sliding_window_sums_the_last_m_buckets() -> None:
    spec = WindowSpec(bucket_ms=MIN, aggregate="sum", buckets_per_window=3)
    st_ = new_window_state(1, spec)
    _upd(st_, spec, [(0, T0 + 10, 1.0), (0, T0 + MIN, 2.0)])
    assert window_close_until(st_, spec, T0 + 2 * MIN).value.tolist() == [1.0, 3.0]
    _upd(st_, spec, [(0, T0 + 2 * MIN, 4.0)])
    # the sensor falls silent: the watermark closes the window ending with its newest
    # bucket; the tail (windows holding only older buckets) waits for the sensor
    out = window_close_until(st_, spec, T0 + 10 * MIN)
    assert (out.window_end.tolist(), out.value.tolist()) == ([T0 + 3 * MIN], [7.0])
    out = window_close_until(st_, spec, END_OF_INPUT)
    assert out.window_end.tolist() == [T0 + k * MIN for k in (4, 5)]
    assert out.value.tolist() == [6.0, 4.0]


def test_a_backlog_hours_behind_the_partition_runs_on_its_sensors_own_clock() -> None:
    spec = WindowSpec(bucket_ms=15 * MIN, aggregate="sum", lateness_ms=MIN)
    st_ = new_window_state(2, spec)
    assert _upd(st_, spec, [(0, T0, 1.0), (1, T0, 1.0)], wm=T0) == [ACCEPTED] * 2
    # sensor 1 reports for 3 h; sensor 0 is silent: its window closes, and no further
    assert _upd(st_, spec, [(1, T0 + k * 5 * MIN, 1.0) for k in range(1, 37)]) == [ACCEPTED] * 36
    out = window_close_until(st_, spec, T0 + 3 * 60 * MIN)
    assert out.sensor.tolist().count(0) == 1 and out.window_end[out.sensor == 0][0] == T0 + 15 * MIN
    # then it sends 3 h of buffered readings at once: all taken, closed in its own time
    backlog = [(0, T0 + k * 5 * MIN, 2.0) for k in range(3, 36)]
    assert _upd(st_, spec, backlog, wm=T0 + 3 * 60 * MIN) == [ACCEPTED] * len(backlog)
    out = window_close_until(st_, spec, T0 + 3 * 60 * MIN)
    mine = out.window_end[out.sensor == 0].tolist()
    assert mine == [T0 + k * 15 * MIN for k in range(2, 12)]  # up to its own time - lateness
    assert out.value[out.sensor == 0].tolist() == [6.0] * 10
    # both were heard at 3 h: the watermark leaves their open windows alone for the
    # lateness, then closes the one ending at 3 h (sensor 1: 2:45, 2:50, 2:55)
    assert len(window_close_until(st_, spec, T0 + 3 * 60 * MIN + MIN - 1).sensor) == 0
    out = window_close_until(st_, spec, T0 + 3 * 60 * MIN + MIN)
    assert (out.sensor.tolist(), out.value.tolist()) == ([0, 1], [6.0, 3.0])
    assert out.window_end.tolist() == [T0 + 3 * 60 * MIN] * 2


def test_spec_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError, match="bucket_ms must be positive, got 0"):
        WindowSpec(bucket_ms=0)
    with pytest.raises(ValueError, match="unknown aggregate 'median'"):
        WindowSpec(bucket_ms=1, aggregate="median")  # type: ignore[arg-type]


def test_state_bytes_per_sensor() -> None:
    # the ring's buckets and the sensor's 16-byte clock
    assert WindowSpec(bucket_ms=15 * MIN, aggregate="max").bytes_per_sensor == 48
    assert WindowSpec(bucket_ms=15 * MIN, aggregate="rate").bytes_per_sensor == 96


value_st = st.one_of(
    st.floats(-1e3, 1e3, allow_nan=False),
    st.sampled_from([0.0, 2.5, 2.5, float("nan")]),
)


@st.composite
def window_cases(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    bucket = draw(st.sampled_from([MIN, 5 * MIN]))
    spec = WindowSpec(
        bucket_ms=bucket,
        aggregate=draw(st.sampled_from(AGGREGATES)),
        buckets_per_window=draw(st.integers(1, 4)),
        lateness_ms=draw(st.sampled_from([0, MIN // 2, 2 * bucket])),
        ring=draw(st.sampled_from([0, 6])),
    )
    steps = []
    wm = T0
    for _ in range(draw(st.integers(1, 6))):
        # readings scattered around the watermark: late, on time, early, out of order
        step = bucket // 6
        offs = st.integers(-36, 18).map(lambda x, d=step: x * d)
        reading = st.tuples(st.integers(0, N - 1), offs.map(lambda o, w=wm: w + o), value_st)
        rows = draw(st.lists(reading, max_size=25))
        if rows and draw(st.booleans()):  # a burst at one instant: duplicates and ties
            burst = draw(st.lists(value_st, min_size=1, max_size=5))
            rows = rows + [rows[0]] + [(rows[0][0], rows[0][1], v) for v in burst]
        q = draw(st.lists(st.sampled_from([0, 1, 3, 4, 9]), min_size=len(rows), max_size=len(rows)))
        wm += draw(st.sampled_from([0, 1000, bucket, 3 * bucket, 20 * bucket]))  # incl. silence
        steps.append((rows, q, wm))
    return spec, steps


@settings(max_examples=80, deadline=None)
@given(window_cases())
def test_kernel_matches_reference(case) -> None:  # type: ignore[no-untyped-def]
    spec, steps = case
    state = new_window_state(N, spec)
    ref = WindowsReference(spec)
    for rows, q, wm in [*steps, ([], [], steps[-1][2] + 100 * spec.bucket_ms)]:
        codes = _upd(state, spec, rows, q, wm)
        assert codes == ref.update(
            [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], q, wm
        )
        got = window_close_until(state, spec, wm)
        want = ref.close_until(wm)
        assert got.sensor.tolist() == [w[0] for w in want]
        assert got.window_end.tolist() == [w[1] for w in want]
        assert got.n_readings.tolist() == [w[3] for w in want]
        np.testing.assert_allclose(got.value, [w[2] for w in want], rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(window_cases())
def test_batch_equals_reading_by_reading(case) -> None:  # type: ignore[no-untyped-def]
    spec, steps = case
    a = new_window_state(N, spec)
    b = new_window_state(N, spec)
    for rows, q, wm in steps:
        whole = _upd(a, spec, rows, q, wm)
        single = [_upd(b, spec, [r], [qq], wm)[0] for r, qq in zip(rows, q, strict=True)]
        assert whole == single
        ga, gb = window_close_until(a, spec, wm), window_close_until(b, spec, wm)
        for x, y in zip(ga, gb, strict=True):
            np.testing.assert_array_equal(x, y)

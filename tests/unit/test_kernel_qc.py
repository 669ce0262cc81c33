"""QC kernel: differential tests against the plain-Python reference, and the rules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contracts.batch import Quality
from engine.evaluation.kernels import _common
from engine.evaluation.kernels.qc import QCParams, new_qc_state, qc_batch
from engine.evaluation.kernels.qc_reference import QCReference

N = 4
NOW = 1_700_000_000_000
MIN = 60_000


def test_flag_constants_match_quality_enum() -> None:
    assert _common.Q_UNCHECKED == Quality.UNCHECKED
    assert _common.Q_GOOD == Quality.GOOD
    assert _common.Q_SUSPECT == Quality.SUSPECT
    assert _common.Q_FAIL == Quality.FAIL
    assert _common.Q_MISSING == Quality.MISSING


def _params(**kw: object) -> QCParams:
    nan = np.full(1, np.nan)
    base: dict[str, object] = dict(
        fail_lo=nan, fail_hi=nan, suspect_lo=nan, suspect_hi=nan, spike=nan, rate_per_h=nan
    )
    base.update(kw)
    return QCParams(**base)  # type: ignore[arg-type]


def _flags(p: QCParams, ts: list[int], values: list[float], now: int = NOW) -> list[int]:
    s = np.zeros(len(ts), dtype=np.uint32)
    out = qc_batch(new_qc_state(1), p, s, np.array(ts, dtype=np.int64), np.array(values), now)
    return out.tolist()


def test_each_rule_flags_its_own_case() -> None:
    t = [NOW - 3 * MIN, NOW - 2 * MIN, NOW - MIN]
    assert _flags(_params(), t, [1.0, float("nan"), 2.0]) == [1, 9, 1]
    rng = _params(fail_lo=np.array([0.0]), fail_hi=np.array([10.0]), suspect_hi=np.array([8.0]))
    assert _flags(rng, t, [-0.1, 9.0, 10.0]) == [4, 3, 3]
    assert _flags(_params(spike=np.array([1.0])), t, [1.0, 2.5, 2.0]) == [1, 3, 1]
    # 0.5 m in one minute is 30 m/h
    assert _flags(_params(rate_per_h=np.array([29.0])), t, [1.0, 1.5, 1.5]) == [1, 3, 1]
    flat = _params(flat_eps=0.001, flat_suspect_n=2, flat_fail_n=3)
    assert _flags(flat, t, [1.0, 1.0005, 1.0]) == [1, 3, 4]
    future = _params(future_ms=MIN, max_age_ms=10 * MIN)
    assert _flags(future, [NOW + 2 * MIN, NOW - 11 * MIN, NOW + MIN], [1.0, 1.0, 1.0]) == [4, 4, 1]


def test_single_thresholds_apply_to_every_sensor() -> None:
    p = _params(fail_hi=np.array([10.0]), spike=np.array([1.0]))
    t = np.array([NOW - 2 * MIN, NOW - MIN, NOW - 2 * MIN, NOW - MIN], dtype=np.int64)
    s = np.array([0, 0, 5, 5], dtype=np.uint32)
    got = qc_batch(new_qc_state(6), p, s, t, np.array([1.0, 3.0, 11.0, 2.0]), NOW)
    assert got.tolist() == [1, 3, 4, 1]


def test_threshold_count_must_match_the_state() -> None:
    p = QCParams.disabled(3)
    with pytest.raises(ValueError, match="qc_batch: 3 thresholds for 2 sensors"):
        qc_batch(new_qc_state(2), p, np.zeros(1, np.uint32), np.zeros(1, np.int64), np.ones(1), NOW)


def test_failed_reading_is_not_the_next_reference() -> None:
    p = _params(fail_hi=np.array([100.0]), spike=np.array([5.0]))
    t = [NOW - 3 * MIN, NOW - 2 * MIN, NOW - MIN]
    # the 999 spike fails and must not make the return to 1.0 look like a spike
    assert _flags(p, t, [1.0, 999.0, 1.0]) == [1, 4, 1]


values = st.one_of(
    st.floats(-50, 50, allow_nan=False),
    st.sampled_from([0.0, 1.0, 1.0, 10.0, float("nan")]),
)


@st.composite
def qc_cases(draw: st.DrawFn) -> tuple[QCParams, list[list[tuple[int, int, float, int]]]]:
    def arr(lo: float, hi: float) -> np.ndarray:
        return np.array(
            [draw(st.one_of(st.just(float("nan")), st.floats(lo, hi))) for _ in range(N)]
        )

    p = QCParams(
        fail_lo=arr(-60, -20),
        fail_hi=arr(20, 60),
        suspect_lo=arr(-30, 0),
        suspect_hi=arr(0, 30),
        spike=arr(0, 20),
        rate_per_h=arr(0, 500),
        flat_eps=draw(st.sampled_from([0.0, 0.01, 1.0])),
        flat_suspect_n=draw(st.integers(0, 4)),
        flat_fail_n=draw(st.integers(0, 6)),
        future_ms=draw(st.sampled_from([0, MIN, 10 * MIN])),
        max_age_ms=draw(st.sampled_from([MIN, 30 * MIN, _common.TS_MAX])),
    )
    reading = st.tuples(
        st.integers(0, N - 1),
        st.integers(-40, 15).map(lambda k: NOW + k * MIN // 2),  # out of order, duplicates
        values,
        st.sampled_from([0, 0, 0, 1, 3, 4, 9]),
    )
    batches = draw(st.lists(st.lists(reading, max_size=30), max_size=5))
    return p, batches


@settings(max_examples=80, deadline=None)
@given(qc_cases())
def test_kernel_matches_reference(
    case: tuple[QCParams, list[list[tuple[int, int, float, int]]]],
) -> None:
    p, batches = case
    state = new_qc_state(N)
    ref = QCReference(p)
    for batch in batches:
        s = [r[0] for r in batch]
        t = [r[1] for r in batch]
        v = [r[2] for r in batch]
        q = [r[3] for r in batch]
        got = qc_batch(
            state,
            p,
            np.array(s, dtype=np.uint32),
            np.array(t, dtype=np.int64),
            np.array(v, dtype=np.float64),
            NOW,
            np.array(q, dtype=np.uint8),
        )
        assert got.tolist() == ref.run(s, t, v, NOW, q)
    for sensor, prev in ref.prev.items():
        assert state["last_ts"][sensor] == prev["ts"]
        assert state["flat_run"][sensor] == prev["run"]


@settings(max_examples=40, deadline=None)
@given(qc_cases())
def test_one_batch_equals_reading_by_reading(
    case: tuple[QCParams, list[list[tuple[int, int, float, int]]]],
) -> None:
    p, batches = case
    rows = [r for b in batches for r in b]
    cols = [np.array([r[i] for r in rows], dtype=d) for i, d in enumerate(("u4", "i8", "f8", "u1"))]
    whole = qc_batch(new_qc_state(N), p, cols[0], cols[1], cols[2], NOW, cols[3])
    state = new_qc_state(N)
    single = [
        qc_batch(state, p, *(c[i : i + 1] for c in cols[:3]), NOW, cols[3][i : i + 1])[0]
        for i in range(len(rows))
    ]
    assert whole.tolist() == single

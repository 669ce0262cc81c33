"""QARTOD-style quality control of readings, per sensor, in arrival order.

Contract
--------
``qc_batch`` flags every reading of a batch with an :class:`engine.contracts.batch.Quality` value
(GOOD=1, SUSPECT=3, FAIL=4, MISSING=9) and advances the per-sensor state. Readings are
taken in **arrival order** (the order of the arrays), which is the order the sensor's
previous value is defined by; event times (``ts``, ms since epoch, UTC) are only used
for the time checks and the rate of change.

Tests, most severe wins:

- value NaN → MISSING;
- ``ts > now_ms + future_ms`` (clock ahead) or ``ts < now_ms - max_age_ms`` → FAIL;
- gross range: outside ``[fail_lo, fail_hi]`` → FAIL, outside ``[suspect_lo, suspect_hi]``
  → SUSPECT (NaN bound = no bound);
- spike: ``|v - prev| > spike`` → SUSPECT;
- rate of change: ``|v - prev| / (ts - prev_ts)`` in units per hour ``> rate_per_h`` →
  SUSPECT; only when ``ts > prev_ts`` (out-of-order and duplicate times are not rated);
- flat line: the run of consecutive readings each within ``flat_eps`` of the one before
  reaches ``flat_suspect_n`` → SUSPECT, ``flat_fail_n`` → FAIL (0 = test off);
- an incoming flag (``q_in``, e.g. set by a decoder) is kept when it is more severe.

Values are in the metric's unit (m, mm, µg/m³, kPa …); thresholds in the same unit.

The state (one packed 20-byte record per sensor: last value, last ts, flat-run length)
moves only on readings that are usable as a reference: not MISSING, not failed by the
time checks, the gross range or the incoming flag. So one garbage value does not
poison the spike test for the next reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
from numba import njit

from engine.evaluation.kernels._common import (
    MS_PER_HOUR,
    NO_TS,
    Q_FAIL,
    Q_GOOD,
    Q_MISSING,
    Q_SUSPECT,
    TS_MAX,
    check_sensors,
)
from engine.evaluation.kernels._prefetch import PREFETCH_AHEAD, prefetch

__all__ = ["QC_PARAMS_DTYPE", "QC_STATE_DTYPE", "QCParams", "new_qc_state", "qc_batch"]

#: One record per sensor; packed, 20 bytes.
QC_STATE_DTYPE = np.dtype([("last_value", "f8"), ("last_ts", "i8"), ("flat_run", "u4")])

#: Per-sensor thresholds, packed (see ``QCParams.packed``).
QC_PARAMS_DTYPE = np.dtype(
    [(k, "f8") for k in ("fail_lo", "fail_hi", "suspect_lo", "suspect_hi", "spike", "rate_per_h")]
)

F8 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class QCParams:
    """Thresholds in the metric's unit; NaN = test off.

    The six arrays have one element per sensor, or a single element that then applies to
    every sensor of the rule (broadcast with stride 0: no memory and no cache line per
    sensor, which at millions of sensors is a third of the QC cost).
    """

    fail_lo: F8
    fail_hi: F8
    suspect_lo: F8
    suspect_hi: F8
    spike: F8
    rate_per_h: F8
    flat_eps: float = 0.0
    flat_suspect_n: int = 0
    flat_fail_n: int = 0
    future_ms: int = 5 * 60_000
    max_age_ms: int = TS_MAX

    @classmethod
    def disabled(cls, n_sensors: int) -> QCParams:
        """All tests off except NaN → MISSING and the time checks."""
        nan = np.full(n_sensors, np.nan)
        return cls(nan, nan, nan, nan, nan, nan)

    @cached_property
    def packed(self) -> npt.NDArray[np.void]:
        """The six per-sensor thresholds as one 48-byte record per sensor, built once.

        A reading then costs one cache line of parameters instead of six: at millions
        of sensors every line is a miss to main memory.
        """
        rec = np.empty(len(self.fail_lo), dtype=QC_PARAMS_DTYPE)
        for name in QC_PARAMS_DTYPE.names or ():
            rec[name] = getattr(self, name)
        return rec

    def arrays(self, n_sensors: int) -> tuple[F8, ...]:
        p = self.packed
        if len(p) == 1:
            p = np.broadcast_to(p, (n_sensors,))
        return tuple(p[name] for name in QC_PARAMS_DTYPE.names or ())


def new_qc_state(n_sensors: int) -> npt.NDArray[np.void]:
    """Fresh state: no previous reading for any sensor."""
    state = np.zeros(n_sensors, dtype=QC_STATE_DTYPE)
    state["last_value"] = np.nan
    state["last_ts"] = NO_TS
    return state


def time_limits(params: QCParams, now_ms: int) -> tuple[int, int]:
    """(latest, earliest) acceptable event time at ``now_ms``, clamped to int64."""
    future = TS_MAX if params.future_ms >= TS_MAX - now_ms else now_ms + params.future_ms
    past = NO_TS if params.max_age_ms >= now_ms - NO_TS - 1 else now_ms - params.max_age_ms
    return int(future), int(past)


def qc_batch(
    state: npt.NDArray[np.void],
    params: QCParams,
    sensor: npt.NDArray[np.integer],
    ts: npt.NDArray[np.int64],
    value: npt.NDArray[np.float64],
    now_ms: int,
    q_in: npt.NDArray[np.uint8] | None = None,
) -> npt.NDArray[np.uint8]:
    """Flag a batch (arrival order) and advance ``state`` in place; returns uint8 flags."""
    check_sensors(sensor, len(state), "qc_batch")
    if len(params.fail_lo) not in (1, len(state)):
        raise ValueError(f"qc_batch: {len(params.fail_lo)} thresholds for {len(state)} sensors")
    if q_in is None:
        q_in = np.zeros(len(ts), dtype=np.uint8)
    future_lim, past_lim = time_limits(params, now_ms)
    return _qc_kernel(
        state["last_value"],
        state["last_ts"],
        state["flat_run"],
        *params.arrays(len(state)),
        float(params.flat_eps),
        int(params.flat_suspect_n),
        int(params.flat_fail_n),
        future_lim,
        past_lim,
        sensor,
        ts,
        value,
        q_in,
    )


@njit(cache=True)
def _qc_kernel(  # type: ignore[no-untyped-def]
    last_value,
    last_ts,
    flat_run,
    fail_lo,
    fail_hi,
    suspect_lo,
    suspect_hi,
    spike,
    rate_per_h,
    flat_eps,
    flat_suspect_n,
    flat_fail_n,
    future_lim,
    past_lim,
    sensor,
    ts,
    value,
    q_in,
):
    n = ts.shape[0]
    out = np.empty(n, dtype=np.uint8)
    for i in range(n):
        if i + PREFETCH_AHEAD < n:
            ahead = sensor[i + PREFETCH_AHEAD]
            prefetch(last_value, ahead)
            prefetch(flat_run, ahead)
            prefetch(fail_lo, ahead)
            prefetch(rate_per_h, ahead)
        s = sensor[i]
        v = value[i]
        t = ts[i]
        qi = q_in[i]
        if np.isnan(v):
            out[i] = Q_MISSING
            continue
        if t > future_lim or t < past_lim:
            out[i] = max(Q_FAIL, qi)
            continue
        q = Q_GOOD
        if v < fail_lo[s] or v > fail_hi[s]:
            out[i] = max(Q_FAIL, qi)
            continue
        if v < suspect_lo[s] or v > suspect_hi[s]:
            q = Q_SUSPECT
        pt = last_ts[s]
        run = 1
        if pt != NO_TS:
            dv = abs(v - last_value[s])
            if dv > spike[s]:
                q = Q_SUSPECT
            if t > pt and dv / (t - pt) * MS_PER_HOUR > rate_per_h[s]:
                q = Q_SUSPECT
            if dv <= flat_eps:
                run = flat_run[s] + 1
        if flat_fail_n > 0 and run >= flat_fail_n:
            q = Q_FAIL
        elif flat_suspect_n > 0 and run >= flat_suspect_n and q < Q_SUSPECT:
            q = Q_SUSPECT
        if qi > q:
            q = qi
        out[i] = q
        if qi in (Q_FAIL, Q_MISSING):
            continue
        last_value[s] = v
        last_ts[s] = t
        flat_run[s] = run
    return out

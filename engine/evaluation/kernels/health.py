"""Sensor health: a gauge that fails quality control, or falls silent, is itself an alert.

Per sensor, in event-time order:

- **QC failure**: ``fail_after`` consecutive readings flagged FAIL (gross range, stuck
  sensor) raise a QC alert dated at the first of them ("gauge stuck since 14:05"); the
  next reading that does not fail clears it.
- **Silence**: no reading for ``stale_ms`` after the last one raises a silent alert dated
  ``last + stale_ms``, found when the partition's watermark passes that time. A reading
  clears it, dated at that reading, once the sensor is current again: the reading is
  within ``stale_ms`` of the partition's event time before its batch (``current_from``).
  A store-and-forward backlog still older than that, uploaded in chunks while the
  partition's other sensors are current, neither clears the silence nor moves its
  start, so the device's outage is one alert and one all-clear, not one per chunk.

State (``HEALTH_DTYPE``, 32 bytes per sensor) and outputs are plain arrays. Output rows:
sensor, kind (``QC`` or ``SILENT``), firing (1) or cleared (0), event time (ms), the
time the condition started (ms) and the reading's value (NaN for silence).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from engine.evaluation.kernels._common import NO_TS, Q_FAIL
from engine.evaluation.kernels._prefetch import PREFETCH_AHEAD, prefetch

__all__ = [
    "HEALTH_DTYPE",
    "QC",
    "SILENT",
    "change_arrays",
    "check_silence",
    "current_from",
    "new_health_state",
    "observe",
]

QC, SILENT = 1, 2

HEALTH_DTYPE = np.dtype(
    [
        ("last_ts", "<i8"),  # the latest reading's event time (ms)
        ("fail_since", "<i8"),  # first reading of the current run of QC failures
        ("fail_run", "<u4"),  # length of that run
        ("qc_alert", "u1"),  # a QC alert is firing
        ("silent", "u1"),  # a silence alert is firing
        ("_pad", "u1", (10,)),  # 32 bytes: a record never straddles a cache line
    ]
)


def new_health_state(n: int) -> npt.NDArray[np.void]:
    state = np.zeros(n, dtype=HEALTH_DTYPE)
    state["last_ts"] = NO_TS
    state["fail_since"] = NO_TS
    return state


def change_arrays(n: int) -> tuple[npt.NDArray[np.generic], ...]:
    """``n`` rows of health changes: sensor, kind, firing, ms, since ms, value."""
    return (
        np.empty(n, np.int64),
        np.empty(n, np.uint8),
        np.empty(n, np.uint8),
        np.empty(n, np.int64),
        np.empty(n, np.int64),
        np.empty(n, np.float64),
    )


@njit(cache=True)
def _observe(last_ts, fail_since, fail_run, qc_alert, silent, fail_after, current_from,  # type: ignore[no-untyped-def]
             sensor, ts, value, flags, o_s, o_k, o_f, o_t, o_since, o_v):  # fmt: skip
    n = 0
    m = ts.shape[0]
    for r in range(m):
        if r + PREFETCH_AHEAD < m:
            prefetch(last_ts, sensor[r + PREFETCH_AHEAD])  # the record's one cache line
        i = sensor[r]
        t = ts[r]
        if silent[i] and t >= current_from:
            silent[i] = 0
            o_s[n], o_k[n], o_f[n], o_t[n], o_since[n], o_v[n] = (
                i,
                SILENT,
                0,
                t,
                last_ts[i],
                value[r],
            )
            n += 1
        if t > last_ts[i] and not silent[i]:
            last_ts[i] = t
        if flags[r] == Q_FAIL:
            if fail_run[i] == 0:
                fail_since[i] = t
            fail_run[i] += 1
            if fail_run[i] >= fail_after and not qc_alert[i]:
                qc_alert[i] = 1
                o_s[n], o_k[n], o_f[n], o_t[n], o_since[n], o_v[n] = (
                    i,
                    QC,
                    1,
                    t,
                    fail_since[i],
                    value[r],
                )
                n += 1
        else:
            fail_run[i] = 0
            if qc_alert[i]:
                qc_alert[i] = 0
                o_s[n], o_k[n], o_f[n], o_t[n], o_since[n], o_v[n] = (
                    i,
                    QC,
                    0,
                    t,
                    fail_since[i],
                    value[r],
                )
                n += 1
    return n


def observe(
    state: npt.NDArray[np.void],
    fail_after: int,
    sensor: npt.NDArray[np.integer],
    ts: npt.NDArray[np.int64],
    value: npt.NDArray[np.float64],
    flags: npt.NDArray[np.uint8],
    current_from: int = NO_TS,
) -> tuple[npt.NDArray[np.generic], ...]:
    """Take readings (event-time order per sensor) with their QC flags; returns changes.
    ``current_from`` (ms): the earliest reading that ends a silence (see the module)."""
    out = change_arrays(2 * len(ts))
    n = _observe(
        state["last_ts"], state["fail_since"], state["fail_run"], state["qc_alert"],
        state["silent"], fail_after, current_from, sensor, ts, value, flags, *out,
    )  # fmt: skip
    return tuple(a[:n] for a in out)


def current_from(stale_ms: int, partition_ms: int) -> int:
    """The earliest event time (ms) of a reading that ends its sensor's silence, for a
    batch evaluated when the partition's event time was ``partition_ms``: a reading
    within ``stale_ms`` of it (any reading while the partition has none)."""
    if partition_ms == NO_TS or stale_ms <= 0:
        return NO_TS
    return partition_ms - stale_ms + 1


def check_silence(
    state: npt.NDArray[np.void], stale_ms: int, watermark: int
) -> tuple[npt.NDArray[np.generic], ...]:
    """Raise silence for sensors with no reading in ``stale_ms`` before ``watermark``."""
    last = state["last_ts"]
    due = np.flatnonzero((last != NO_TS) & (state["silent"] == 0) & (last + stale_ms <= watermark))
    state["silent"][due] = 1
    k = len(due)
    return (
        due.astype(np.int64),
        np.full(k, SILENT, np.uint8),
        np.ones(k, np.uint8),
        last[due] + stale_ms,
        last[due].copy(),
        np.full(k, np.nan),
    )

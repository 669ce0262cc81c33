"""Sensor health: a gauge that fails quality control, or falls silent, is itself an alert.

Per sensor, in event-time order:

- **QC failure**: ``fail_after`` consecutive readings flagged FAIL (gross range, stuck
  sensor) raise a QC alert dated at the first of them ("gauge stuck since 14:05"); the
  next reading that does not fail clears it.
- **Silence**: no reading for ``stale_ms`` after the last one raises a silent alert dated
  ``last + stale_ms``, found when the partition's event time passes that time: between
  batches (``check_silence`` at the watermark) and within one, at a reading that comes
  ``stale_ms`` or more after the sensor's last one, from ``prior``, the partition's event
  time before that reading (``prior_times``: a gap inside one batch is found as in
  batches of one reading; the readings of a backlog chunk, each close to the one
  before, make no silence between them). A reading clears it, dated at that reading,
  once the sensor is current again: the reading is less than ``stale_ms`` before
  ``prior``. A store-and-forward backlog older than that, uploaded in chunks while the
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
    "new_health_state",
    "observe",
    "prior_of_derived",
    "prior_times",
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
def _observe(last_ts, fail_since, fail_run, qc_alert, silent, fail_after, stale_ms, prior,  # type: ignore[no-untyped-def]
             sensor, ts, value, flags, o_s, o_k, o_f, o_t, o_since, o_v):  # fmt: skip
    n = 0
    m = ts.shape[0]
    for r in range(m):
        if r + PREFETCH_AHEAD < m:
            prefetch(last_ts, sensor[r + PREFETCH_AHEAD])  # the record's one cache line
        i = sensor[r]
        t = ts[r]
        current_from = NO_TS
        if stale_ms > 0 and prior[r] != NO_TS:
            due = last_ts[i] + stale_ms
            if not silent[i] and last_ts[i] != NO_TS and due <= prior[r] and due <= t:
                silent[i] = 1  # a gap in its series the partition passed before this reading
                o_s[n], o_k[n], o_f[n], o_t[n], o_since[n], o_v[n] = (
                    i,
                    SILENT,
                    1,
                    last_ts[i] + stale_ms,
                    last_ts[i],
                    np.nan,
                )
                n += 1
            current_from = prior[r] - stale_ms + 1
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
    prior: npt.NDArray[np.int64] | None = None,
    stale_ms: int = 0,
) -> tuple[npt.NDArray[np.generic], ...]:
    """Take readings (event-time order per sensor) with their QC flags; returns changes.
    ``prior`` (ms, one per reading): the partition's event time before it, NO_TS while
    the partition has none; ``stale_ms`` the rule's silence (0: none). See the module."""
    if prior is None:
        prior = np.full(len(ts), NO_TS, np.int64)
    out = change_arrays(3 * len(ts))  # a reading can begin and end a silence, and a QC run
    n = _observe(
        state["last_ts"], state["fail_since"], state["fail_run"], state["qc_alert"],
        state["silent"], fail_after, stale_ms, prior, sensor, ts, value, flags, *out,
    )  # fmt: skip
    return tuple(a[:n] for a in out)


def prior_times(
    ts: npt.NDArray[np.int64], moves: npt.NDArray[np.bool_], before: int
) -> npt.NDArray[np.int64]:
    """For each reading of a batch (times ``ts``, ms), the partition's event time just
    before it when the batch's readings are taken one by one in stable event-time order
    (as the processor takes them, and as batches of one reading in that order would): the
    latest time of the readings before it in that order that move the partition's time
    (``moves``; one stamped past the clock does not), or ``before`` (the partition's
    time before the batch, NO_TS for none) if later. A reading of the same time that
    came earlier counts; the reading's own time never does."""
    order = np.argsort(ts, kind="stable")
    moved = np.where(moves[order], ts[order], NO_TS)
    run = np.full(len(ts), before, np.int64)
    if len(ts) > 1:
        run[1:] = np.maximum(np.maximum.accumulate(moved[:-1]), before)
    prior = np.empty(len(ts), np.int64)
    prior[order] = run
    return prior


def prior_of_derived(
    ts: npt.NDArray[np.int64], moved: npt.NDArray[np.int64], before: int
) -> npt.NDArray[np.int64]:
    """``prior_times`` for readings derived from a batch (formulas, AQI): the latest of
    ``moved`` (the batch's times that moved the partition's time) earlier than each time
    of ``ts``, or ``before`` if later. A formula's reading has its source's time, so
    this is its source's prior. An hourly AQI reading is stamped at its hour's start and
    made when a later reading closes the hour: batches of one judge it at that later
    reading's prior, so at a gap of exactly ``stale`` they raise a silence (and end it
    at once) that one batch does not."""
    ordered = np.sort(moved)
    at = np.searchsorted(ordered, ts, side="left")
    earlier = ordered[np.maximum(at - 1, 0)] if len(ordered) else np.full(len(ts), NO_TS)
    return np.maximum(np.where(at > 0, earlier, NO_TS), before).astype(np.int64, copy=False)


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

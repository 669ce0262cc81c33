"""Event-time tumbling and sliding windows per sensor, with watermark and lateness.

Contract
--------
Time is event time in ms since epoch, UTC. Windows are aligned to the epoch: bucket
``k`` covers ``[k*bucket_ms, (k+1)*bucket_ms)``; the window *ending* at bucket ``k`` covers
buckets ``k-m+1 .. k`` (``m = buckets_per_window``; ``m = 1`` is a tumbling window,
``m > 1`` a window of ``m*bucket_ms`` sliding by ``bucket_ms``) and has
``window_end = (k+1)*bucket_ms`` (exclusive).

A window closes when the watermark reaches ``window_end + lateness_ms``.
:func:`window_close_until` closes every window that the watermark has passed, for
**all** sensors (a silent sensor's last window closes too) and emits those that hold at
least one reading, ordered by ``(window_end, sensor)``. Call it after each batch with the
partition's watermark; it costs O(1) when no window boundary was crossed and one pass
over the state when one was.

:func:`window_update` adds a batch (any order) and returns a code per reading:

- ``ACCEPTED`` (0): added; this includes readings behind the watermark whose window is
  still open (late, but within the allowed lateness);
- ``LATE`` (1): every window the reading belongs to is already closed; dead-letter it;
- ``EARLY`` (2): beyond the ring of buckets (more than ``ring - m`` buckets ahead of the
  oldest open window): the sensor's clock is wrong or the watermark is stuck;
  dead-letter it (the QC future-time test catches most of these first);
- ``EXCLUDED`` (3): NaN value, or QC flag FAIL or MISSING; SUSPECT readings are used.

Aggregates: ``sum``, ``mean``, ``count``, ``min``, ``max`` (the "simple" ones, 16-byte
buckets) and ``first``, ``last`` (by event time; a tie goes to the later arrival),
``delta`` (last − first), ``rate`` (delta per hour between the first and last reading's
times; NaN for a single reading) (the "temporal" ones, 40-byte buckets). Values are in the
metric's unit; ``rate`` in unit/h.

State (plain arrays, checkpointable): ``buckets`` with shape (n_sensors, ring) of one
of the bucket dtypes, and ``clock``, one record holding the first window not yet closed.
A tumbling ``max`` rule with the default ring of 2 costs 32 bytes per sensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt
from numba import njit

from engine.kernels._common import MS_PER_HOUR, Q_FAIL, Q_MISSING, check_sensors
from engine.kernels._prefetch import PREFETCH_AHEAD, prefetch2

__all__ = [
    "ACCEPTED",
    "AGGREGATES",
    "EARLY",
    "EXCLUDED",
    "LATE",
    "ClosedWindows",
    "WindowSpec",
    "WindowState",
    "new_closed_buffer",
    "new_window_state",
    "window_close_until",
    "window_update",
]

ACCEPTED, LATE, EARLY, EXCLUDED = 0, 1, 2, 3

Aggregate = Literal["sum", "mean", "count", "min", "max", "first", "last", "delta", "rate"]
AGGREGATES: tuple[Aggregate, ...] = (
    "sum",
    "mean",
    "count",
    "min",
    "max",
    "first",
    "last",
    "delta",
    "rate",
)
_SUM, _MEAN, _COUNT, _MIN, _MAX, _FIRST, _LAST, _DELTA, _RATE = range(9)
_TEMPORAL_FROM = _FIRST

SIMPLE_BUCKET = np.dtype([("k", "u4"), ("n", "u4"), ("a", "f8")])
TEMPORAL_BUCKET = np.dtype(
    [("k", "u4"), ("n", "u4"), ("a", "f8"), ("b", "f8"), ("ta", "i8"), ("tb", "i8")]
)
CLOCK_DTYPE = np.dtype([("next_close", "i8")])


@dataclass(frozen=True)
class WindowSpec:
    """Window geometry. ``ring`` buckets are kept per sensor.

    The default ring, ``m + ceil(lateness/bucket) + 1``, holds the open windows plus the
    bucket after the watermark's own: enough for a watermark that trails the newest
    readings by less than one bucket.
    """

    bucket_ms: int
    aggregate: Aggregate = "max"
    buckets_per_window: int = 1
    lateness_ms: int = 0
    ring: int = 0

    def __post_init__(self) -> None:
        if self.bucket_ms <= 0:
            raise ValueError(f"bucket_ms must be positive, got {self.bucket_ms}")
        if self.buckets_per_window < 1:
            raise ValueError(f"buckets_per_window must be >= 1, got {self.buckets_per_window}")
        if self.lateness_ms < 0:
            raise ValueError(f"lateness_ms must be >= 0, got {self.lateness_ms}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregate {self.aggregate!r}; expected one of {AGGREGATES}")
        if self.ring and self.ring < self.buckets_per_window:
            raise ValueError(f"ring {self.ring} is shorter than the window")

    @property
    def ring_size(self) -> int:
        late_buckets = -(-self.lateness_ms // self.bucket_ms)
        return self.ring or self.buckets_per_window + late_buckets + 1

    @property
    def agg_code(self) -> int:
        return AGGREGATES.index(self.aggregate)

    @property
    def bucket_dtype(self) -> np.dtype[np.void]:
        return TEMPORAL_BUCKET if self.agg_code >= _TEMPORAL_FROM else SIMPLE_BUCKET

    @property
    def bytes_per_sensor(self) -> int:
        return self.ring_size * self.bucket_dtype.itemsize


class WindowState(NamedTuple):
    buckets: npt.NDArray[np.void]  # (n_sensors, ring)
    clock: npt.NDArray[np.void]  # (1,) CLOCK_DTYPE


class ClosedWindows(NamedTuple):
    sensor: npt.NDArray[np.int64]
    window_end: npt.NDArray[np.int64]  # ms, exclusive end
    value: npt.NDArray[np.float64]
    n_readings: npt.NDArray[np.int64]


def new_window_state(n_sensors: int, spec: WindowSpec, watermark_ms: int) -> WindowState:
    """Empty state as if :func:`window_close_until` had run with ``watermark_ms``."""
    buckets = np.zeros((n_sensors, spec.ring_size), dtype=spec.bucket_dtype)
    clock = np.zeros(1, dtype=CLOCK_DTYPE)
    clock["next_close"][0] = (watermark_ms - spec.lateness_ms) // spec.bucket_ms
    return WindowState(buckets, clock)


def bucket_fields(
    state: WindowState,
) -> tuple[npt.NDArray[np.generic], ...]:
    b = state.buckets
    if b.dtype == TEMPORAL_BUCKET:
        return b["k"], b["n"], b["a"], b["b"], b["ta"], b["tb"]
    # simple buckets: the temporal fields are never touched; pass same-typed stand-ins
    return b["k"], b["n"], b["a"], b["a"], _NO_T, _NO_T


_NO_T = np.zeros((0, 0), dtype=np.int64)[:, :]


def window_update(
    state: WindowState,
    spec: WindowSpec,
    sensor: npt.NDArray[np.integer],
    ts: npt.NDArray[np.int64],
    value: npt.NDArray[np.float64],
    quality: npt.NDArray[np.uint8],
) -> npt.NDArray[np.uint8]:
    """Add a batch to the open windows; returns a code per reading (see module doc)."""
    check_sensors(sensor, len(state.buckets), "window_update")
    return _update_kernel(
        *bucket_fields(state),
        spec.agg_code,
        int(state.clock["next_close"][0]),
        spec.bucket_ms,
        spec.buckets_per_window,
        spec.ring_size,
        sensor,
        ts,
        value,
        quality,
    )


def window_close_until(
    state: WindowState, spec: WindowSpec, watermark_ms: int, out: ClosedWindows | None = None
) -> ClosedWindows:
    """Close every window with ``window_end + lateness_ms <= watermark_ms``, all sensors.

    ``out``, when given (see :func:`new_closed_buffer`), is reused for the result when it
    is large enough, and the returned arrays are views into it, overwritten by the next
    call with the same buffer. At millions of sensors, faulting in fresh pages for the
    result costs as much as computing it.
    """
    nc = int(state.clock["next_close"][0])
    new_nc = (watermark_ms - spec.lateness_ms) // spec.bucket_ms
    if new_nc <= nc:
        e = np.empty(0, dtype=np.int64)
        return ClosedWindows(e, e.copy(), np.empty(0), e.copy())
    n_rows = len(state.buckets) * min(new_nc - nc, spec.ring_size)
    if out is None or len(out.sensor) < n_rows:
        out = new_closed_buffer(n_rows)
    j = _close_kernel(
        *bucket_fields(state),
        spec.agg_code,
        nc,
        new_nc,
        spec.bucket_ms,
        spec.buckets_per_window,
        spec.ring_size,
        *out,
    )
    state.clock["next_close"][0] = new_nc
    return ClosedWindows(out.sensor[:j], out.window_end[:j], out.value[:j], out.n_readings[:j])


def new_closed_buffer(rows: int) -> ClosedWindows:
    """Room for ``rows`` closed windows (one per sensor and window closed at once)."""
    return ClosedWindows(
        np.empty(rows, dtype=np.int64),
        np.empty(rows, dtype=np.int64),
        np.empty(rows, dtype=np.float64),
        np.empty(rows, dtype=np.int64),
    )


@njit(cache=True)
def _update_kernel(  # type: ignore[no-untyped-def]
    kk, nn, aa, bb, ta, tb, agg, next_close, bucket_ms, m, ring, sensor, ts, value, quality
):
    n = ts.shape[0]
    out = np.empty(n, dtype=np.uint8)
    lo = next_close - m + 1
    hi = next_close - m + ring
    lo_slot = lo % ring
    # two 64-bit integer divisions per reading cost more than the rest of the loop: the
    # bucket comes from a float multiply, corrected by one step (ts < 2**53 is exact),
    # and the slot from the offset within the accepted range
    inv = 1.0 / bucket_ms
    temporal = agg >= _TEMPORAL_FROM
    for i in range(n):
        if i + PREFETCH_AHEAD < n:
            ahead = sensor[i + PREFETCH_AHEAD]
            prefetch2(kk, ahead, 0)
            prefetch2(kk, ahead, ring - 1)
        v = value[i]
        q = quality[i]
        if q in (Q_FAIL, Q_MISSING) or np.isnan(v):
            out[i] = EXCLUDED
            continue
        t = ts[i]
        kb = np.int64(np.floor(t * inv))
        if kb * bucket_ms > t:
            kb -= 1
        elif (kb + 1) * bucket_ms <= t:
            kb += 1
        if kb < lo:
            out[i] = LATE
            continue
        if kb > hi:
            out[i] = EARLY
            continue
        out[i] = ACCEPTED
        s = sensor[i]
        slot = lo_slot + (kb - lo)
        if slot >= ring:
            slot -= ring
        key = np.uint32(kb & 0xFFFFFFFF)
        if nn[s, slot] == 0 or kk[s, slot] != key:
            kk[s, slot] = key
            nn[s, slot] = 1
            aa[s, slot] = v
            if temporal:
                bb[s, slot] = v
                ta[s, slot] = t
                tb[s, slot] = t
            continue
        nn[s, slot] += 1
        if temporal:
            if t < ta[s, slot]:
                aa[s, slot] = v
                ta[s, slot] = t
            if t >= tb[s, slot]:
                bb[s, slot] = v
                tb[s, slot] = t
        elif agg == _MIN:
            if v < aa[s, slot]:
                aa[s, slot] = v
        elif agg == _MAX:
            if v > aa[s, slot]:
                aa[s, slot] = v
        else:
            aa[s, slot] += v
    return out


@njit(cache=True)
def _close_kernel(  # type: ignore[no-untyped-def]
    kk, nn, aa, bb, ta, tb, agg, nc, new_nc, bucket_ms, m, ring, o_s, o_e, o_v, o_n
):
    n_sensors = kk.shape[0]
    # windows past nc + ring - 1 cannot hold data: their buckets were never accepted
    last = min(new_nc - 1, nc + ring - 1)
    temporal = agg >= _TEMPORAL_FROM
    # the slot and key of each bucket do not depend on the sensor: computed once per window
    slots = np.empty(m, dtype=np.int64)
    keys = np.empty(m, dtype=np.uint32)
    j = 0
    for k in range(nc, last + 1):
        for d in range(m):
            kb = k - m + 1 + d
            slots[d] = kb % ring
            keys[d] = np.uint32(kb & 0xFFFFFFFF)
        for s in range(n_sensors):
            cnt = 0
            acc = 0.0
            fa = 0.0
            fb = 0.0
            t0 = 0
            t1 = 0
            for d in range(m):
                slot = slots[d]
                c = nn[s, slot]
                if c == 0 or kk[s, slot] != keys[d]:
                    continue
                x = aa[s, slot]
                if cnt == 0:
                    acc = x
                    if temporal:
                        fa = x
                        t0 = ta[s, slot]
                elif agg == _MIN:
                    acc = min(acc, x)
                elif agg == _MAX:
                    acc = max(acc, x)
                elif not temporal:
                    acc += x
                if temporal:
                    fb = bb[s, slot]
                    t1 = tb[s, slot]
                cnt += c
            if cnt == 0:
                continue
            if agg == _MEAN:
                acc = acc / cnt
            elif agg == _COUNT:
                acc = float(cnt)
            elif agg == _FIRST:
                acc = fa
            elif agg == _LAST:
                acc = fb
            elif agg == _DELTA:
                acc = fb - fa
            elif agg == _RATE:
                acc = (fb - fa) / (t1 - t0) * MS_PER_HOUR if t1 > t0 else np.nan
            o_s[j] = s
            o_e[j] = (k + 1) * bucket_ms
            o_v[j] = acc
            o_n[j] = cnt
            j += 1
    return j

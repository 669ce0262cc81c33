"""Rainfall accumulations over 1 h, 3 h, 6 h and 24 h from incremental rain readings.

Contract
--------
A reading is the rain (mm) fallen since the gauge's previous report (a tipping-bucket
increment, SL 651 ``PJ``-style), with its event time in ms since epoch, UTC. Readings go
into hourly buckets (``bucket_ms``, default 1 h, aligned to the epoch) exactly as in
:mod:`engine.kernels.windows` (a ``sum`` window of ``max(spans)`` buckets): same
watermark, lateness, codes (ACCEPTED/LATE/EARLY/EXCLUDED) and QC exclusion.

When the watermark passes an hour's end + lateness, :func:`rain_close_until` emits for
each sensor with any reading in the last ``max(spans)`` buckets one row:
``(sensor, hour_end, acc[span_0], acc[span_1], …)``, the sums (mm) over the last
``span_i`` buckets ending at ``hour_end``; hours without a reading count as 0 mm. Rows are
ordered by ``(hour_end, sensor)``. The mountain-torrent thresholds (FACTS.md §4.3) are
per window, so the caller feeds each column to its own :mod:`engine.kernels.levels` rule.

State: the window state of a 24-bucket sum window, 16 bytes per bucket (25 buckets,
400 bytes per gauge, with no lateness).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from numba import njit

from engine.kernels.windows import (
    WindowSpec,
    WindowState,
    bucket_fields,
    new_window_state,
    window_update,
)

__all__ = ["RainAccumulations", "RainSpec", "new_rain_state", "rain_close_until", "rain_update"]

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class RainSpec:
    spans: tuple[int, ...] = (1, 3, 6, 24)  # in buckets
    bucket_ms: int = HOUR_MS
    lateness_ms: int = 0

    @property
    def window(self) -> WindowSpec:
        return WindowSpec(
            bucket_ms=self.bucket_ms,
            aggregate="sum",
            buckets_per_window=max(self.spans),
            lateness_ms=self.lateness_ms,
        )


class RainAccumulations(NamedTuple):
    sensor: npt.NDArray[np.int64]
    hour_end: npt.NDArray[np.int64]  # ms, exclusive end of the last bucket
    acc_mm: npt.NDArray[np.float64]  # (rows, len(spans))


def new_rain_state(n_sensors: int, spec: RainSpec, watermark_ms: int) -> WindowState:
    return new_window_state(n_sensors, spec.window, watermark_ms)


def rain_update(
    state: WindowState,
    spec: RainSpec,
    sensor: npt.NDArray[np.integer],
    ts: npt.NDArray[np.int64],
    rain_mm: npt.NDArray[np.float64],
    quality: npt.NDArray[np.uint8],
) -> npt.NDArray[np.uint8]:
    """Add increments (mm); returns the window codes (see :mod:`engine.kernels.windows`)."""
    return window_update(state, spec.window, sensor, ts, rain_mm, quality)


def rain_close_until(state: WindowState, spec: RainSpec, watermark_ms: int) -> RainAccumulations:
    """Emit the accumulations for every hour the watermark has closed, all gauges."""
    w = spec.window
    nc = int(state.clock["next_close"][0])
    new_nc = (watermark_ms - w.lateness_ms) // w.bucket_ms
    if new_nc <= nc:
        e = np.empty(0, dtype=np.int64)
        return RainAccumulations(e, e.copy(), np.empty((0, len(spec.spans))))
    kk, nn, aa = bucket_fields(state)[:3]
    out = _rain_close_kernel(
        kk, nn, aa, nc, new_nc, w.bucket_ms, w.buckets_per_window, w.ring_size,
        np.array(spec.spans, dtype=np.int64),
    )  # fmt: skip
    state.clock["next_close"][0] = new_nc
    return RainAccumulations(*out)


@njit(cache=True)
def _rain_close_kernel(kk, nn, aa, nc, new_nc, bucket_ms, m, ring, spans):  # type: ignore[no-untyped-def]
    n_sensors = kk.shape[0]
    last = min(new_nc - 1, nc + ring - 1)
    n_win = last - nc + 1
    o_s = np.empty(n_sensors * n_win, dtype=np.int64)
    o_e = np.empty(n_sensors * n_win, dtype=np.int64)
    o_a = np.zeros((n_sensors * n_win, spans.shape[0]), dtype=np.float64)
    j = 0
    for k in range(nc, last + 1):
        for s in range(n_sensors):
            seen = False
            for d in range(m):
                kb = k - d
                slot = kb % ring
                if nn[s, slot] == 0 or kk[s, slot] != np.uint32(kb & 0xFFFFFFFF):
                    continue
                seen = True
                for i in range(spans.shape[0]):
                    if d < spans[i]:
                        o_a[j, i] += aa[s, slot]
            if seen:
                o_s[j] = s
                o_e[j] = (k + 1) * bucket_ms
                j += 1
    return o_s[:j], o_e[:j], o_a[:j]

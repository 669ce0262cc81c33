"""Rainfall accumulations over 1 h, 3 h, 6 h and 24 h from incremental rain readings.

Contract
--------
A reading is the rain (mm) fallen since the gauge's previous report (a tipping-bucket
increment, SL 651 ``PJ``-style), with its event time in ms since epoch, UTC. Readings go
into hourly buckets (``bucket_ms``, default 1 h, aligned to the epoch) of a ``sum``
window of ``max(spans)`` buckets in :mod:`engine.evaluation.kernels.windows`: the same per-gauge
clocks, lateness, codes (ACCEPTED/LATE/EXCLUDED) and QC exclusion.

When a gauge's hour closes (its own readings, or the partition watermark for a silent
gauge, pass the hour's end + lateness), :func:`rain_close_until` emits one row for it:
``(sensor, hour_end, acc[span_0], acc[span_1], …)``, the sums (mm) over the last
``span_i`` buckets ending at ``hour_end``; hours without a reading count as 0 mm. Only
hours whose last ``max(spans)`` buckets hold a reading are emitted. Rows are ordered by
``(hour_end, sensor)``. The mountain-torrent thresholds (FACTS.md §4.3) are per window, so
the caller feeds each column to its own :mod:`engine.evaluation.kernels.levels` rule.

State: the window state of a 24-bucket sum window, 16 bytes per bucket (25 buckets,
400 bytes per gauge, with no lateness) and its clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from engine.evaluation.kernels.windows import (
    WindowSpec,
    WindowState,
    new_window_state,
    window_close_until,
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


def new_rain_state(n_sensors: int, spec: RainSpec) -> WindowState:
    return new_window_state(n_sensors, spec.window, spec.spans)


def rain_update(
    state: WindowState,
    spec: RainSpec,
    sensor: npt.NDArray[np.integer],
    ts: npt.NDArray[np.int64],
    rain_mm: npt.NDArray[np.float64],
    quality: npt.NDArray[np.uint8],
    watermark_ms: int | None = None,
) -> npt.NDArray[np.uint8]:
    """Add increments (mm); returns the window codes (see ``kernels.windows``)."""
    return window_update(state, spec.window, sensor, ts, rain_mm, quality, watermark_ms)


def rain_close_until(state: WindowState, spec: RainSpec, watermark_ms: int) -> RainAccumulations:
    """The accumulations of every gauge-hour closed since the last call (the silent
    gauges' hours up to ``watermark_ms`` included); valid until the next update or close."""
    closed = window_close_until(state, spec.window, watermark_ms)
    return RainAccumulations(closed.sensor, closed.window_end, closed.span_sums)

"""Plain-Python reference for :mod:`engine.kernels.windows` (differential tests only).

Keeps every accepted reading per sensor in a list and computes each closed window's
aggregate with NumPy over the readings whose bucket lies in the window: no ring, no
incremental merge, so it shares nothing with the kernel but the contract.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from engine.batch import Quality
from engine.kernels.windows import ACCEPTED, EARLY, EXCLUDED, LATE, WindowSpec

__all__ = ["WindowsReference"]


class WindowsReference:
    def __init__(self, spec: WindowSpec, watermark_ms: int) -> None:
        self.spec = spec
        self.next_close = (watermark_ms - spec.lateness_ms) // spec.bucket_ms
        # sensor -> [(bucket, ts, arrival, value)]
        self.kept: dict[int, list[tuple[int, int, int, float]]] = defaultdict(list)
        self.arrivals = 0

    def update(
        self, sensor: list[int], ts: list[int], value: list[float], quality: list[int]
    ) -> list[int]:
        codes = []
        sp = self.spec
        m, ring = sp.buckets_per_window, sp.ring_size
        for s, t, v, q in zip(sensor, ts, value, quality, strict=True):
            if q in (Quality.FAIL, Quality.MISSING) or math.isnan(v):
                codes.append(EXCLUDED)
                continue
            b = t // sp.bucket_ms
            # the newest window holding bucket b ends at b + m - 1
            if b + m - 1 < self.next_close:
                codes.append(LATE)
            elif b > self.next_close - m + ring:
                codes.append(EARLY)
            else:
                codes.append(ACCEPTED)
                self.kept[s].append((b, t, self.arrivals, v))
            self.arrivals += 1
        return codes

    def close_until(self, watermark_ms: int) -> list[tuple[int, int, float, int]]:
        """(sensor, window_end, value, count) sorted by (window_end, sensor)."""
        sp = self.spec
        new_nc = (watermark_ms - sp.lateness_ms) // sp.bucket_ms
        out = []
        if new_nc > self.next_close:
            for s, rows in self.kept.items():
                ends = {b + d for b, _, _, _ in rows for d in range(sp.buckets_per_window)}
                for k in sorted(ends):
                    if self.next_close <= k < new_nc:
                        sel = [r for r in rows if k - sp.buckets_per_window < r[0] <= k]
                        out.append((s, (k + 1) * sp.bucket_ms, _aggregate(sp, sel), len(sel)))
            self.next_close = new_nc
        out.sort(key=lambda r: (r[1], r[0]))
        return out


def _aggregate(sp: WindowSpec, rows: list[tuple[int, int, int, float]]) -> float:
    v = np.array([r[3] for r in rows])
    agg = sp.aggregate
    if agg == "sum":
        return float(np.sum(v))
    if agg == "mean":
        return float(np.mean(v))
    if agg == "count":
        return float(len(v))
    if agg == "min":
        return float(np.min(v))
    if agg == "max":
        return float(np.max(v))
    # by event time; among equal times the first arrival is "first", the last is "last"
    first = min(rows, key=lambda r: (r[1], r[2]))
    last = max(rows, key=lambda r: (r[1], r[2]))
    delta = last[3] - first[3]
    if agg == "first":
        return first[3]
    if agg == "last":
        return last[3]
    if agg == "delta":
        return delta
    if last[1] == first[1]:
        return math.nan
    return delta / (last[1] - first[1]) * 3_600_000.0

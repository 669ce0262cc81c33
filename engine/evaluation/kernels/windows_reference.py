"""Plain-Python reference for :mod:`engine.evaluation.kernels.windows` (differential tests only).

Keeps every accepted reading per sensor in a list and computes each closed window's
aggregate with NumPy over the readings whose bucket lies in the window: no ring, no
incremental merge, so it shares nothing with the kernel but the contract (a window
the watermark closed reopens for its sensor's next reading if nothing of the sensor's
is newer, and is emitted again when it closes again).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from engine.contracts.batch import Quality
from engine.evaluation.kernels.windows import ACCEPTED, END_OF_INPUT, EXCLUDED, LATE, WindowSpec

__all__ = ["WindowsReference"]


class WindowsReference:
    def __init__(self, spec: WindowSpec, spans: tuple[int, ...] = ()) -> None:
        self.spec = spec
        self.spans = spans
        self.next_close: dict[int, int] = {}  # sensor -> first window not closed
        self.heard: dict[int, int] = {}  # sensor -> watermark when it last sent
        # sensor -> [(bucket, ts, arrival, value)]
        self.kept: dict[int, list[tuple[int, int, int, float]]] = defaultdict(list)
        self.closed: list[tuple[int, int, float, int, list[float]]] = []
        self.arrivals = 0

    def update(
        self,
        sensor: list[int],
        ts: list[int],
        value: list[float],
        quality: list[int],
        watermark: int,
    ) -> list[int]:
        codes = []
        sp = self.spec
        m, ring, b_ms, late = sp.buckets_per_window, sp.ring_size, sp.bucket_ms, sp.lateness_ms
        for s, t, v, q in zip(sensor, ts, value, quality, strict=True):
            self.heard[s] = watermark
            if q in (Quality.FAIL, Quality.MISSING) or math.isnan(v):
                codes.append(EXCLUDED)
                continue
            # the sensor's own time closes the windows it has passed by the lateness
            if s not in self.next_close:
                self.next_close[s] = (t - late) // b_ms
            elif (t - late) // b_ms > self.next_close[s]:
                self._close(s, (t - late) // b_ms)
            b = t // b_ms
            newest = max((r[0] for r in self.kept[s]), default=None)
            if b < self.next_close[s] and newest is not None and newest <= b:
                # Only the watermark closes the window of a sensor's newest bucket (while
                # it is silent): a reading of that bucket or a later one reopens the
                # windows holding it. At the end of the input it may have closed up to
                # newest + m - 1.
                assert self.next_close[s] - m <= newest
                self.next_close[s] = b
            # the newest window holding bucket b ends at b + m - 1
            if b + m - 1 < self.next_close[s]:
                codes.append(LATE)
                continue
            if b > self.next_close[s] - m + ring:  # a short ring: the oldest close early
                self._close(s, b - ring + m)
            codes.append(ACCEPTED)
            self.kept[s].append((b, t, self.arrivals, v))
            self.arrivals += 1
        return codes

    def _close(self, s: int, until: int) -> None:
        """Close sensor ``s``'s windows before ``until``; those holding readings are
        reported."""
        sp = self.spec
        rows = self.kept[s]
        ends = {b + d for b, _, _, _ in rows for d in range(sp.buckets_per_window)}
        for k in sorted(ends):
            if self.next_close[s] <= k < until:
                sel = [r for r in rows if k - sp.buckets_per_window < r[0] <= k]
                sums = [sum(r[3] for r in sel if r[0] > k - n) for n in self.spans]
                end = (k + 1) * sp.bucket_ms
                self.closed.append((s, end, _aggregate(sp, sel), len(sel), sums))
        self.next_close[s] = until

    def close_until(self, watermark_ms: int) -> list[tuple[int, int, float, int, list[float]]]:
        """(sensor, window_end, value, count, sums over the last spans' buckets) closed
        since the last call, sorted by (window_end, sensor)."""
        sp = self.spec
        m = sp.buckets_per_window
        k_wm = (watermark_ms - sp.lateness_ms) // sp.bucket_ms
        for s, nc in self.next_close.items():
            if self.heard[s] + sp.lateness_ms > watermark_ms:
                continue  # not silent: its own readings close its windows
            open_buckets = [r[0] for r in self.kept[s] if r[0] + m - 1 >= nc]
            if not open_buckets:
                continue
            # up to the window ending with its newest bucket; the tail at the end only
            stop = max(open_buckets) + (m if watermark_ms >= END_OF_INPUT else 1)
            until = min(k_wm, stop)
            if max(nc, min(open_buckets)) < until:
                self._close(s, until)
        out, self.closed = self.closed, []
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

"""Plain-Python reference for :mod:`engine.evaluation.kernels.qc` (differential tests only).

Written as the rules read, one reading at a time with a dict per sensor, so that it
shares no code with the kernel.
"""

from __future__ import annotations

import math
from typing import Any

from engine.contracts.batch import Quality
from engine.evaluation.kernels.qc import QCParams

__all__ = ["QCReference"]


class QCReference:
    """Same contract as :func:`engine.evaluation.kernels.qc.qc_batch`, state in a dict."""

    def __init__(self, params: QCParams) -> None:
        self.p = params
        self.prev: dict[int, dict[str, Any]] = {}

    def run(
        self,
        sensor: list[int],
        ts: list[int],
        value: list[float],
        now_ms: int,
        q_in: list[int] | None = None,
    ) -> list[int]:
        return [
            self._one(s, t, v, now_ms, 0 if q_in is None else q_in[i])
            for i, (s, t, v) in enumerate(zip(sensor, ts, value, strict=True))
        ]

    def _one(self, s: int, t: int, v: float, now_ms: int, qi: int) -> int:
        p = self.p
        if math.isnan(v):
            return Quality.MISSING
        if t - now_ms > p.future_ms or now_ms - t > p.max_age_ms:
            return max(Quality.FAIL, qi)
        if _outside(v, p.fail_lo[s], p.fail_hi[s]):
            return max(Quality.FAIL, qi)
        flags: list[int] = [Quality.GOOD]
        if _outside(v, p.suspect_lo[s], p.suspect_hi[s]):
            flags.append(Quality.SUSPECT)
        prev = self.prev.get(s)
        run = 1
        if prev is not None:
            dv = abs(v - prev["value"])
            if dv > p.spike[s]:
                flags.append(Quality.SUSPECT)
            # the kernel's arithmetic, so that a rate exactly on the limit agrees
            if t > prev["ts"] and dv / (t - prev["ts"]) * 3_600_000.0 > p.rate_per_h[s]:
                flags.append(Quality.SUSPECT)
            if dv <= p.flat_eps:
                run = prev["run"] + 1
        if p.flat_fail_n and run >= p.flat_fail_n:
            flags.append(Quality.FAIL)
        elif p.flat_suspect_n and run >= p.flat_suspect_n:
            flags.append(Quality.SUSPECT)
        flags.append(qi)
        if qi not in (Quality.FAIL, Quality.MISSING):
            self.prev[s] = {"value": v, "ts": t, "run": run}
        return int(max(flags))


def _outside(v: float, lo: float, hi: float) -> bool:
    return (not math.isnan(lo) and v < lo) or (not math.isnan(hi) and v > hi)

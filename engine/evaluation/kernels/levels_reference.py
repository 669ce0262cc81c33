"""Plain-Python reference for :mod:`engine.evaluation.kernels.levels` (differential tests only).

One small object per sensor, the rules spelled out as in the module's contract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from engine.evaluation.kernels.levels import LEVEL, RETURNED, SILENT, LevelParams

__all__ = ["LevelsReference", "Row"]

Row = tuple[int, int, int, int, float, float, int]  # sensor, from, to, ts, value, thr, kind


@dataclass
class _Sensor:
    level: int = 0
    silent: bool = False
    last_ts: int | None = None
    breached_since: dict[int, int] = field(default_factory=dict)  # level -> since


class LevelsReference:
    def __init__(self, params: LevelParams) -> None:
        self.p = params
        self.sensors: dict[int, _Sensor] = {}

    def _breached(self, s: int, v: float, level: int, margin: float = 0.0) -> bool:
        thr = float(self.p.thresholds[s, level - 1])
        return not math.isnan(thr) and self.p.direction * (v - thr) >= -margin

    def evaluate(self, sensor: list[int], ts: list[int], value: list[float]) -> list[Row]:
        out: list[Row] = []
        for s, t, v in zip(sensor, ts, value, strict=True):
            if math.isnan(v):
                continue
            st = self.sensors.setdefault(s, _Sensor())
            if st.last_ts is not None and t < st.last_ts:
                continue
            if st.silent:
                st.silent = False
                out.append((s, st.level, st.level, t, v, math.nan, RETURNED))
            st.last_ts = t
            breached = [lv for lv in range(1, 5) if self._breached(s, v, lv)]
            raw = max(breached, default=0)
            for lv in range(1, 5):
                if lv <= raw:
                    st.breached_since.setdefault(lv, t)
                else:
                    st.breached_since.pop(lv, None)
            ready = [
                lv
                for lv in breached
                if lv > st.level and t - st.breached_since[lv] >= self.p.for_ms
            ]
            if ready:
                new = max(ready)
            else:
                held = [
                    lv for lv in range(1, st.level + 1) if self._breached(s, v, lv, self.p.deadband)
                ]
                new = min(st.level, max(held, default=0))
            if new != st.level:
                thr = float(self.p.thresholds[s, max(new, st.level) - 1])
                out.append((s, st.level, new, t, v, thr, LEVEL))
                st.level = new
        return out

    def check_silence(self, now_ms: int) -> list[Row]:
        out: list[Row] = []
        if self.p.stale_ms <= 0:
            return out
        for s in sorted(self.sensors):
            st = self.sensors[s]
            if not st.silent and st.last_ts is not None and now_ms - st.last_ts > self.p.stale_ms:
                st.silent = True
                out.append(
                    (s, st.level, st.level, st.last_ts + self.p.stale_ms, np.nan, np.nan, SILENT)
                )
        return out

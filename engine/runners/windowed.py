"""Window-chain runner: closed-window aggregates (``engine.kernels.windows``) evaluated
by ``engine.kernels.levels`` (for-duration, deadband) when each window closes."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.health import HealthChange, RuleHealth
from engine.kernels import levels as lv
from engine.kernels import windows as win
from engine.kernels._common import NO_TS
from engine.kernels.order import fresh
from engine.ruleset import ThresholdRule
from engine.runners.base import (
    RawTransition,
    Rejected,
    SensorIndex,
    gathered_thresholds,
    signature,
)

__all__ = ["WindowedRunner"]

log = logging.getLogger(__name__)


class WindowedRunner:
    def __init__(self, rule: ThresholdRule, lateness_ms: int) -> None:
        self.sensors = SensorIndex(rule)
        self.health = RuleHealth(rule)  # QC and sensor health, before the windows
        step = rule.slide_ms or rule.window_ms
        self.spec = win.WindowSpec(
            bucket_ms=step,
            aggregate=rule.aggregate,
            buckets_per_window=rule.window_ms // step,
            lateness_ms=lateness_ms,
        )
        self.windows: win.WindowState | None = None  # made at the first watermark
        self.levels = lv.new_levels_state(0)
        self.episode = np.zeros(0, np.int64)
        self.counted = np.zeros(0, np.int64)
        self.last_ts = np.zeros(0, np.int64)  # per sensor: the newest reading taken (ms)
        self.rejected: list[Rejected] = []
        self.params = self._params(0)
        #: Closed windows (dense sensor, window end ms, aggregate) since the last drain,
        #: for `vigil replay --metrics-out`; None when nobody collects them.
        self.closed: list[tuple[int, int, float]] | None = None

    @property
    def rule(self) -> ThresholdRule:
        return self.sensors.rule

    def _params(self, n: int) -> lv.LevelParams:
        rule = self.rule
        return lv.LevelParams(
            gathered_thresholds(self.sensors, n), rule.direction, rule.deadband, rule.for_ms
        )

    def grow(self, n: int) -> None:
        self.health.grow(n)
        size = len(self.levels)
        if n <= size:
            return
        size = max(n, 2 * size, 16)
        levels = lv.new_levels_state(size)
        levels[: len(self.levels)] = self.levels
        self.levels = levels
        self.episode = np.concatenate([self.episode, np.zeros(size - len(self.episode), np.int64)])
        self.counted = np.concatenate([self.counted, np.zeros(size - len(self.counted), np.int64)])
        self.last_ts = np.concatenate([self.last_ts, np.full(size - len(self.last_ts), NO_TS)])
        if self.windows is not None:
            buckets = np.zeros((size, self.spec.ring_size), self.spec.bucket_dtype)
            buckets[: len(self.windows.buckets)] = self.windows.buckets
            self.windows = win.WindowState(buckets, self.windows.clock)
        self.params = self._params(size)

    def rebind(self, rule: ThresholdRule) -> None:
        self.sensors.bind(rule)
        self.health.rebind(rule)
        self.params = self._params(len(self.levels))

    def _ensure_windows(self, watermark: int) -> win.WindowState:
        if self.windows is None:
            self.windows = win.new_window_state(len(self.levels), self.spec, watermark)
        return self.windows

    def apply(
        self,
        sensor: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint8],
        watermark: int,
        now_ms: int,
    ) -> tuple[list[RawTransition], list[HealthChange]]:
        quality, changes = self.health.check(sensor, ts, value, quality, now_ms)
        return self._windows(sensor, ts, value, quality), changes

    def _windows(
        self,
        sensor: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint8],
    ) -> list[RawTransition]:
        out: list[RawTransition] = []
        keep, _ = fresh(self.last_ts, sensor, ts)  # redeliveries count once
        if not keep.all():
            sensor, ts, value, quality = sensor[keep], ts[keep], value[keep], quality[keep]
        if len(ts) == 0:
            return out
        # The first batch starts the clock at its earliest reading, not at "no time yet".
        windows = self._ensure_windows(int(ts[0]))
        spec, ring, m = self.spec, self.spec.ring_size, self.spec.buckets_per_window
        start, n = 0, len(ts)
        # The ring holds a few buckets past the oldest open window; a batch spanning more
        # (a backlog after a restart, a replay) goes in slices, closing windows between
        # them exactly as a stream of smaller batches would.
        while start < n:
            limit = (int(windows.clock["next_close"][0]) + ring - m) * spec.bucket_ms
            end = start + int(np.searchsorted(ts[start:], limit, "left"))
            if end == start:
                out += self.close(int(ts[start]))
                continue
            codes = win.window_update(
                windows, spec, sensor[start:end], ts[start:end], value[start:end],
                quality[start:end],
            )  # fmt: skip
            np.add.at(self.counted, sensor[start:end][codes == win.ACCEPTED], 1)
            self._reject(codes, sensor[start:end], ts[start:end], value[start:end])
            start = end
            if start < n:
                out += self.close(int(ts[start - 1]))
        return out

    def _reject(
        self,
        codes: npt.NDArray[np.uint8],
        sensor: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
    ) -> None:
        bad = np.flatnonzero((codes == win.LATE) | (codes == win.EARLY))
        for r in bad.tolist():
            reason = (
                f"late for rule {self.rule.rule_id}: its {self.rule.window_ms // 60_000}-min "
                "window closed already"
                if codes[r] == win.LATE
                else f"too far ahead for rule {self.rule.rule_id}'s open windows"
            )
            self.rejected.append(Rejected(int(sensor[r]), int(ts[r]), float(value[r]), reason))

    def close(self, watermark: int) -> list[RawTransition]:
        """Close windows with ``end + lateness <= watermark`` (the latest event time seen)."""
        if self.windows is None:
            return []
        closed = win.window_close_until(self.windows, self.spec, watermark)
        if len(closed.sensor) == 0:
            return []
        if self.closed is not None:
            self.closed.extend(
                zip(closed.sensor.tolist(), closed.window_end.tolist(), closed.value.tolist(),
                    strict=True)
            )  # fmt: skip
        tr = lv.levels_evaluate(
            self.levels, self.params, closed.sensor, closed.window_end, closed.value
        )
        out = []
        for s, f, t, at, v, h, kind in zip(*(a.tolist() for a in tr), strict=True):
            if kind != lv.LEVEL:
                continue
            if f == 0:
                self.episode[s] = at
            out.append(RawTransition(s, f, t, at, v, h, int(self.episode[s])))
        return out

    def check_silence(self, watermark: int) -> list[HealthChange]:
        return self.health.check_silence(watermark)

    def health_snapshot(self) -> dict[str, Any]:
        return self.health.snapshot(len(self.sensors.stations))

    def adopt_health(self, stations: list[str], saved: dict[str, Any]) -> None:
        lut, _ = self.sensors.lookup(tuple(stations))
        self.grow(len(self.sensors.stations))
        self.health.restore(saved, lut.tolist())

    def accepted(self, station: str) -> int:
        i = self.sensors.index.get(station)
        return 0 if i is None else int(self.counted[i])

    def snapshot(self) -> dict[str, Any]:
        n = len(self.sensors.stations)
        return {
            "sig": signature(self.rule),
            "stations": self.sensors.stations,
            "levels": self.levels[:n].tobytes(),
            "episode": self.episode[:n].tobytes(),
            "counted": self.counted[:n].tobytes(),
            "last_ts": self.last_ts[:n].tobytes(),
            "buckets": None if self.windows is None else self.windows.buckets[:n].tobytes(),
            "clock": NO_TS if self.windows is None else int(self.windows.clock["next_close"][0]),
            "ring": self.spec.ring_size,
            "health": self.health.snapshot(n),
        }

    def restore(self, saved: dict[str, Any]) -> None:
        lut, _ = self.sensors.lookup(tuple(saved["stations"]))
        self.grow(len(self.sensors.stations))
        rows = lut.tolist()
        self.health.restore(saved["health"], rows)
        levels = np.frombuffer(saved["levels"], lv.LEVELS_STATE_DTYPE)
        episode = np.frombuffer(saved["episode"], np.int64)
        counted = np.frombuffer(saved["counted"], np.int64)
        last_ts = np.frombuffer(saved["last_ts"], np.int64)
        if saved["buckets"] is not None and saved["ring"] != self.spec.ring_size:
            # The lateness setting changed the ring's length: open windows start afresh.
            log.warning("rule %s: window ring changed; open windows reset", self.rule.rule_id)
            saved = {**saved, "buckets": None}
        if saved["buckets"] is not None:
            self.windows = win.new_window_state(len(self.levels), self.spec, 0)
            self.windows.clock["next_close"][0] = saved["clock"]
            buckets = np.frombuffer(saved["buckets"], self.spec.bucket_dtype).reshape(
                -1, self.spec.ring_size
            )
        for j, i in enumerate(rows):
            if i < 0:
                continue
            self.levels[i] = levels[j]
            self.episode[i] = episode[j]
            self.counted[i] = counted[j]
            self.last_ts[i] = last_ts[j]
            if saved["buckets"] is not None:
                assert self.windows is not None
                self.windows.buckets[i] = buckets[j]

"""Early-firing runner: ``engine.kernels.tumbling_levels`` for max/above and min/below."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from engine.kernels import tumbling_levels as kernel
from engine.kernels._common import Q_FAIL, Q_MISSING
from engine.ruleset import ThresholdRule
from engine.runners.base import (
    RawTransition,
    Rejected,
    SensorIndex,
    gathered_thresholds,
    signature,
)

__all__ = ["TumblingRunner"]

NEVER = int(np.iinfo(np.int64).max)


def _outputs(n: int) -> tuple[npt.NDArray[Any], ...]:
    return (
        np.empty(n, np.int32),
        np.empty(n, np.int8),
        np.empty(n, np.int8),
        np.empty(n, np.int64),
        np.empty(n, np.float64),
        np.empty(n, np.float64),
    )


class TumblingRunner:
    def __init__(self, rule: ThresholdRule, lateness_ms: int) -> None:
        self.sensors = SensorIndex(rule)
        self.lateness_ms = lateness_ms
        self.state = kernel.new_state(0)
        self.thresholds = np.full((0, 4), np.nan)
        #: No open window ends before this (ms): closing below it is a no-op, so the
        #: O(sensors) scan runs once per window period, not once per batch.
        self.next_close = NEVER
        #: Windows ending at or before this (ms) are closed: a reading for one is late.
        self.closed_until = -NEVER
        self.rejected: list[Rejected] = []

    @property
    def rule(self) -> ThresholdRule:
        return self.sensors.rule

    def grow(self, n: int) -> None:
        if n <= len(self.state):
            return
        state = kernel.new_state(max(n, 2 * len(self.state), 16))
        state[: len(self.state)] = self.state
        self.state = state
        self.thresholds = gathered_thresholds(self.sensors, len(state))

    def rebind(self, rule: ThresholdRule) -> None:
        self.sensors.bind(rule)
        self.thresholds = gathered_thresholds(self.sensors, len(self.state))

    def _transitions(self, out: tuple[npt.NDArray[Any], ...], n: int) -> list[RawTransition]:
        sensor, frm, to, at, value, thr = (a[:n].tolist() for a in out)
        starts = self.state["episode_start"]
        return [
            RawTransition(s, f, t, a, v, h, int(starts[s]))
            for s, f, t, a, v, h in zip(sensor, frm, to, at, value, thr, strict=True)
        ]

    def apply(
        self,
        sensor: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint8],
        watermark: int,
    ) -> list[RawTransition]:
        rule = self.rule
        usable = (quality != Q_FAIL) & (quality != Q_MISSING)  # QC failures never count
        window_end = ts - ts % rule.window_ms + rule.window_ms
        late = window_end <= self.closed_until
        if late.any():
            for r in np.flatnonzero(late & usable).tolist():
                self.rejected.append(Rejected(
                    int(sensor[r]), int(ts[r]), float(value[r]),
                    f"late for rule {rule.rule_id}: its {rule.window_ms // 60_000}-min window "
                    "closed already",
                ))  # fmt: skip
            usable &= ~late
        if not usable.all():
            sensor, ts, value = sensor[usable], ts[usable], value[usable]
        out = _outputs(2 * len(ts))
        n = kernel.process(
            self.state, self.thresholds, rule.direction, rule.deadband, rule.window_ms,
            rule.for_ms, sensor, ts, value, *out,
        )  # fmt: skip
        if len(ts):
            first_end = int(ts.min()) // rule.window_ms * rule.window_ms + rule.window_ms
            self.next_close = min(self.next_close, first_end)
        return self._transitions(out, n)

    def close(self, watermark: int) -> list[RawTransition]:
        closing = watermark - self.lateness_ms
        if closing < self.next_close:
            return []
        rule = self.rule
        out = _outputs(len(self.state))
        n = kernel.close_windows(
            self.state, self.thresholds, rule.direction, rule.deadband, rule.window_ms,
            closing, *out,
        )  # fmt: skip
        self.next_close = kernel.earliest_open_end(self.state, rule.window_ms)
        self.closed_until = max(self.closed_until, closing)
        return self._transitions(out, n)

    def accepted(self, station: str) -> int:
        i = self.sensors.index.get(station)
        return 0 if i is None else int(self.state[i]["accepted"])

    def snapshot(self) -> dict[str, Any]:
        n = len(self.sensors.stations)
        return {
            "sig": signature(self.rule),
            "stations": self.sensors.stations,
            "state": self.state[:n].tobytes(),
            "closed_until": self.closed_until,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        records = np.frombuffer(saved["state"], dtype=kernel.STATE_DTYPE)
        lut, _ = self.sensors.lookup(tuple(saved["stations"]))
        self.grow(len(self.sensors.stations))
        for i, record in zip(lut.tolist(), records, strict=True):
            if i >= 0:
                self.state[i] = record
        self.next_close = kernel.earliest_open_end(self.state, self.rule.window_ms)
        self.closed_until = int(saved.get("closed_until", -NEVER))

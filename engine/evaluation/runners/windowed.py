"""Window-chain runner: closed-window aggregates (``engine.evaluation.kernels.windows``) evaluated
by ``engine.evaluation.kernels.levels`` (for-duration, deadband) when each window closes.

Each sensor's windows run on its own event time (see ``engine.evaluation.kernels.windows``): a
device uploading hours of buffered readings after a coverage gap is evaluated as it
would have been live, while the other sensors of the partition are current. A window
the watermark closed while its sensor was silent is decided provisionally (a raise at
once, a lowering once it is final; ``engine.evaluation.runners.window_decisions``).

An aligned rule (``ThresholdRule.window_shift_ms``: days from 08:00 Beijing time) runs
the windows kernel, which buckets from the epoch, on times moved by the shift
(``kernel_shift_ms``): readings and the watermark go in shifted, the closed windows'
ends come out shifted back (to the boundary, for windows closed on the right). QC,
health and the levels see the true times.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.contracts.ruleset import ThresholdRule
from engine.evaluation.health import HealthChange, RuleHealth
from engine.evaluation.kernels import order
from engine.evaluation.kernels import windows as win
from engine.evaluation.kernels._common import NO_TS
from engine.evaluation.runners.base import (
    RawTransition,
    Rejected,
    SensorIndex,
    signature,
)
from engine.evaluation.runners.window_decisions import WindowDecisions

__all__ = ["WindowedRunner"]

log = logging.getLogger(__name__)

#: Snapshot layout of the windows: 2 = a clock per sensor (1: one clock per partition).
WINDOWS_FORMAT = 2


class WindowedRunner:
    """A window-chain rule on one partition: readings QC'd, counted once and summed into
    each sensor's windows here; the windows that close are decided by ``decisions``."""

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
        self.windows = win.new_window_state(0, self.spec)
        self.decisions = WindowDecisions(self.sensors, self.spec.bucket_ms)
        self.counted = np.zeros(0, np.int64)
        self.recent = order.new_recent(0)  # per sensor: its newest reading times (ms)
        self.rejected: list[Rejected] = []
        #: Closed windows (dense sensor, window end ms, aggregate) since the last drain,
        #: for `vigil replay --metrics-out`; None when nobody collects them.
        self.closed: list[tuple[int, int, float]] | None = None

    @property
    def rule(self) -> ThresholdRule:
        return self.sensors.rule

    def grow(self, n: int) -> None:
        self.health.grow(n)
        self.decisions.grow(n)
        size = len(self.decisions.levels)  # the runner's per-sensor arrays: as many rows
        grown = size - len(self.counted)
        if grown > 0:
            self.counted = np.concatenate([self.counted, np.zeros(grown, np.int64)])
            self.recent = np.concatenate([self.recent, order.new_recent(grown)])
            self.windows = win.grow_window_state(self.windows, size)

    def rebind(self, rule: ThresholdRule) -> None:
        self.sensors.bind(rule)
        self.health.rebind(rule)
        self.decisions.rebind()

    def apply(
        self,
        sensor: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint8],
        watermark: int,
        now_ms: int,
        partition_ms: int = NO_TS,
    ) -> tuple[list[RawTransition], list[HealthChange]]:
        quality, changes = self.health.check(sensor, ts, value, quality, now_ms, partition_ms)
        codes = order.taken(self.recent, sensor, ts)  # each reading counts once
        if codes.any():
            # Older than the sensor's last few readings: a sum cannot tell a redelivery
            # from a reading that far out of order, so it is not counted, but never
            # dropped without a trace. A repeat of a recent reading is a plain duplicate.
            for r in np.flatnonzero(codes == order.UNKNOWN).tolist():
                self.rejected.append(Rejected(
                    int(sensor[r]), int(ts[r]), float(value[r]),
                    f"out of order for rule {self.rule.rule_id}: older than the station's "
                    f"last {order.RECENT} readings (a redelivery, or too late to tell)",
                ))  # fmt: skip
            keep = codes == order.NEW
            sensor, ts, value, quality = sensor[keep], ts[keep], value[keep], quality[keep]
        if len(ts):
            # Each sensor's own readings close its windows as they pass them, inside the
            # kernel: a backlog of any length is exact in one batch.
            sh = self.rule.kernel_shift_ms
            codes = win.window_update(self.windows, self.spec, sensor, ts + sh if sh else ts,
                                      value, quality, watermark + sh)  # fmt: skip
            accepted = codes == win.ACCEPTED
            np.add.at(self.counted, sensor[accepted], 1)
            self.decisions.taken(sensor, ts, accepted)
            self._reject(codes, sensor, ts, value)
        return self.close(watermark), changes

    def _reject(
        self,
        codes: npt.NDArray[np.uint8],
        sensor: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
    ) -> None:
        reason = (
            f"late for rule {self.rule.rule_id}: its {self.rule.window_ms // 60_000}-min "
            "window closed already"
        )
        for r in np.flatnonzero(codes == win.LATE).tolist():
            self.rejected.append(Rejected(int(sensor[r]), int(ts[r]), float(value[r]), reason))

    def close(self, watermark: int) -> list[RawTransition]:
        """Emit the windows closed since the last call: those the sensors' own readings
        closed, and those of silent sensors with ``end + lateness <= watermark`` (the
        latest event time the partition has seen)."""
        sh = self.rule.kernel_shift_ms
        closed = win.window_close_until(self.windows, self.spec, watermark + sh)
        back = sh + self.rule.window_closed_right  # (start, end]: the kernel's end is 1 ms on
        if back:
            closed = closed._replace(window_end=closed.window_end - back)
        if self.closed is not None:
            self.closed.extend(
                zip(closed.sensor.tolist(), closed.window_end.tolist(), closed.value.tolist(),
                    strict=True)
            )  # fmt: skip
        ending = watermark >= win.END_OF_INPUT
        return self.decisions.decide(closed, ending, self.windows.clock)

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
        """The state; taken between batches (``close`` has emitted every closed window)."""
        n = len(self.sensors.stations)
        return {
            "sig": signature(self.rule),
            "stations": self.sensors.stations,
            **self.decisions.saved(n),  # levels, episode, held
            "counted": self.counted[:n].tobytes(),
            "recent": self.recent[:n].tobytes(),
            "windows": WINDOWS_FORMAT,
            "buckets": self.windows.buckets[:n].tobytes(),
            "clock": self.windows.clock[:n].tobytes(),
            "ring": self.spec.ring_size,
            "health": self.health.snapshot(n),
        }

    def restore(self, saved: dict[str, Any]) -> None:
        lut, _ = self.sensors.lookup(tuple(saved["stations"]))
        self.grow(len(self.sensors.stations))
        rows = lut.tolist()
        self.health.restore(saved["health"], rows)
        self.decisions.restore(saved, rows)
        counted = np.frombuffer(saved["counted"], np.int64)
        if "recent" in saved:
            recent = np.frombuffer(saved["recent"], np.int64).reshape(-1, order.RECENT)
        else:  # an older snapshot kept the newest time only: nothing older is told apart
            recent = np.repeat(np.frombuffer(saved["last_ts"], np.int64)[:, None], order.RECENT, 1)
        buckets, clock = _saved_windows(saved, self.spec, len(rows))
        if buckets is None:
            log.warning("rule %s: window ring changed; open windows reset", self.rule.rule_id)
        for j, i in enumerate(rows):
            if i < 0:
                continue
            self.counted[i] = counted[j]
            self.recent[i] = recent[j]
            if buckets is not None:
                self.windows.buckets[i] = buckets[j]
                self.windows.clock[i] = clock[j]
        self.windows.due[0] = NO_TS  # the next close looks at every sensor


def _saved_windows(
    saved: dict[str, Any], spec: win.WindowSpec, n: int
) -> tuple[npt.NDArray[np.void] | None, npt.NDArray[np.void]]:
    """The saved buckets (None when the ring's length changed) and clocks per sensor.

    A format-1 snapshot kept one clock for the partition: every sensor gets that clock
    and counts as silent since then (its ring layout is the same).
    """
    clock = np.empty(n, win.CLOCK_DTYPE)
    clock["next_close"] = NO_TS
    clock["heard"] = NO_TS
    if saved["buckets"] is None:  # format 1, before the first batch: nothing open
        return np.zeros((n, spec.ring_size), spec.bucket_dtype), clock
    if saved["ring"] != spec.ring_size:  # the lateness setting changed the ring's length
        return None, clock
    buckets = np.frombuffer(saved["buckets"], spec.bucket_dtype).reshape(-1, spec.ring_size)
    if saved.get("windows") == WINDOWS_FORMAT:
        clock = np.frombuffer(saved["clock"], win.CLOCK_DTYPE)
    else:
        clock["next_close"] = saved["clock"]
    return buckets, clock

"""The runner contract shared by the processor and the two runner kinds."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from engine.contracts.ruleset import ThresholdCalendar, ThresholdRule
from engine.evaluation.health import HealthChange
from engine.evaluation.kernels._common import NO_TS

__all__ = ["RawTransition", "Rejected", "Runner", "SensorIndex", "gathered_thresholds", "periods"]


class RawTransition(NamedTuple):
    """A level change of one sensor; times in ms UTC, value in the metric's unit."""

    sensor: int  # dense index of the runner
    from_level: int
    to_level: int
    at: int
    value: float
    threshold: float
    started_at: int  # when the episode (departure from level 0) began


class Rejected(NamedTuple):
    """A reading a rule could not take, for the dead-letter topic."""

    sensor: int
    ts: int
    value: float
    reason: str


class SensorIndex:
    """Dense per-partition sensor index for one rule: station -> row, grown on first sight."""

    def __init__(self, rule: ThresholdRule) -> None:
        self.stations: list[str] = []
        self.index: dict[str, int] = {}
        self.bind(rule)

    def bind(self, rule: ThresholdRule) -> None:
        self.rule = rule
        self._rule_rows = rule.station_rows
        self._rows = np.zeros(0, np.intp)

    def rule_rows(self) -> npt.NDArray[np.intp]:
        """Each indexed station's row in the rule (-1: the rule no longer selects it),
        extended as stations are indexed: no pass over them all per call."""
        done = len(self._rows)
        if done < len(self.stations):
            more = [self._rule_rows.get(s, -1) for s in self.stations[done:]]
            self._rows = np.concatenate([self._rows, np.array(more, np.intp)])
        return self._rows

    def rule_row(self, station: str) -> int | None:
        return self._rule_rows.get(station)

    def lookup(self, stations: tuple[str, ...]) -> tuple[npt.NDArray[np.int32], list[str]]:
        """Dense index per station (-1: not selected by the rule) and the new ones."""
        new: list[str] = []
        out = np.empty(len(stations), np.int32)
        for j, station in enumerate(stations):
            i = self.index.get(station)
            if i is None:
                if station not in self._rule_rows:
                    out[j] = -1
                    continue
                i = self.index[station] = len(self.stations)
                self.stations.append(station)
                new.append(station)
            out[j] = i
        return out, new


class Runner(Protocol):
    """One rule on one partition. Readings arrive per batch, sorted by event time.

    Readings the rule cannot take (late past the allowed lateness, or beyond what its
    windows hold) are appended to ``rejected``; the processor drains them.
    """

    sensors: SensorIndex
    rejected: list[Rejected]

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
        """Take readings of sensors already indexed, QC them (``quality`` is the incoming
        flag; ``now_ms`` the clock the time checks use) and return the level transitions
        and the sensor-health changes they cause. ``partition_ms``: the partition's event
        time before this batch (ms); a silent sensor's reading ends its silence only
        within the rule's ``stale`` of it (``engine.evaluation.kernels.health``)."""
        ...

    def close(self, watermark: int) -> list[RawTransition]:
        """Close windows with ``end + lateness <= watermark`` for every sensor; the
        watermark is the latest event time (ms) the partition has seen."""
        ...

    def check_silence(self, watermark: int) -> list[HealthChange]:
        """Sensors silent for the rule's ``stale_ms`` at ``watermark`` (ms), reported once."""
        ...

    def grow(self, n: int) -> None:
        """Make room for ``n`` sensors, keeping state; new rows take the rule's thresholds."""
        ...

    def rebind(self, rule: ThresholdRule) -> None:
        """Take a reloaded rule's thresholds, keeping the window state."""
        ...

    def accepted(self, station: str) -> int:
        """Readings of ``station`` counted into windows (duplicates excluded)."""
        ...

    def snapshot(self) -> dict[str, Any]: ...

    def health_snapshot(self) -> dict[str, Any]:
        """QC and health state of the runner's stations, in ``RuleHealth.snapshot``'s
        format, for the runner that replaces this one when the rule's window changes."""
        ...

    def adopt_health(self, stations: list[str], saved: dict[str, Any]) -> None:
        """Take over the QC and health state (``health_snapshot``) of ``stations``."""
        ...

    def restore(self, saved: dict[str, Any]) -> None: ...


def signature(rule: ThresholdRule) -> list[object]:
    """What must match for a rule's state to survive a reload or a restore."""
    sig: list[object] = [rule.metric, rule.direction, rule.window_ms, rule.slide_ms,
                         rule.aggregate]  # fmt: skip
    # Only an aligned rule says so: an unaligned one keeps its checkpoints from before.
    aligned = rule.window_shift_ms or rule.window_closed_right
    return [*sig, rule.window_shift_ms, rule.window_closed_right] if aligned else sig


def gathered_thresholds(
    sensors: SensorIndex,
    n: int,
    start: int = 0,
    table: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.float64]:
    """The rule's thresholds of dense rows ``start..n-1``, NaN past the stations indexed;
    ``table``: the rule's thresholds of one period instead (``ThresholdCalendar``)."""
    table = sensors.rule.thresholds if table is None else table
    out = np.full((n - start, 4), np.nan)
    rows = sensors.rule_rows()[start:n]
    known = rows >= 0
    out[: len(rows)][known] = table[rows[known]]
    return out


def periods(
    calendar: ThresholdCalendar, ts: npt.NDArray[np.int64]
) -> list[tuple[int, int, int, npt.NDArray[np.float64]]]:
    """``ts`` (sorted, ms) cut where the thresholds change: (first row, end row, period
    start ms, the rule's thresholds then) per piece. Python per period, never per row."""
    out = []
    start, m = 0, len(ts)
    while start < m:
        begin, end, table = calendar.period(int(ts[start]))
        stop = start + int(np.searchsorted(ts[start:], end, side="left"))
        out.append((start, stop, begin, table))
        start = stop
    return out

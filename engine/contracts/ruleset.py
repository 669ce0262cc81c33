"""Compiled rules: what the kernels run, made from validated rule files (see ``rules/``).

This is the contract between ``rules/`` (YAML, pydantic, the station registry) and the
engine. Everything here is already validated; the engine never re-parses YAML.

A ``ThresholdRule`` applies to one metric of a set of stations. Per station it has four
thresholds, one per level (blue, yellow, orange, red), in the metric's unit; NaN means
"this level is not used at this station". ``direction`` is +1 for ``above`` rules
(level entered when the window aggregate >= threshold) and -1 for ``below`` rules.
A level is left only when the aggregate is back past ``threshold - direction*deadband``
(hysteresis), so a reading dithering on the line does not page anyone twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from engine.contracts.alerts import Level

__all__ = [
    "DEFAULT_AQI_METHOD",
    "AqiMethod",
    "CompiledCondition",
    "CompoundRule",
    "CorroborationRule",
    "DerivedMetric",
    "QcLimits",
    "RuleSet",
    "ThresholdCalendar",
    "ThresholdRule",
]

N_LEVELS = 4  # blue, yellow, orange, red
#: Limits of the early-firing kernel's compact state
#: (``engine.evaluation.kernels.tumbling_levels``): a ``for`` clock is a uint32 of ms
#: (49.7 days), a flat-line run a uint16 of readings.
MAX_FOR_MS = 2**32 - 1
MAX_FLAT_N = 2**16 - 1
#: How the hourly AQI is derived from pollutants (``engine.evaluation.derive.aqi``).
AqiMethod = Literal["hj633_24h", "cnemc_hourly"]
DEFAULT_AQI_METHOD: AqiMethod = "hj633_24h"


@dataclass(frozen=True)
class QcLimits:
    """Quality control of a rule's readings, in the metric's unit (None = test off).

    ``min``/``max``: gross range, outside is FAIL; ``max_step``: a jump larger than this
    from the previous reading is SUSPECT; ``flat_n``: this many equal readings in a row
    is a stuck sensor, FAIL. Failed (and missing) readings never raise or clear a level;
    with ``drop_suspect`` neither do SUSPECT ones (the rule's ``qc.drop: [suspect]``).
    """

    min: float | None = None
    max: float | None = None
    max_step: float | None = None
    flat_n: int = 0
    drop_suspect: bool = False


class ThresholdCalendar(Protocol):
    """Thresholds that vary with the date (a reservoir's seasonal flood-limit level, a
    rule curve; made by ``rules.dated``): constant over each period, a local day."""

    def period(self, t_ms: int) -> tuple[int, int, npt.NDArray[np.float64]]:
        """The period ``[start, end)`` (ms UTC) that holds ``t_ms``, and the rule's
        thresholds in force throughout it: shape (len(stations), 4), as
        ``ThresholdRule.thresholds``."""
        ...


@dataclass(frozen=True)
class ThresholdRule:
    """One compiled threshold rule. Times in ms, values in the metric's unit."""

    rule_id: str
    metric: str
    stations: tuple[str, ...]
    thresholds: npt.NDArray[np.float64]  # shape (len(stations), 4); NaN = level unused
    direction: Literal[1, -1] = 1
    window_ms: int = 15 * 60_000
    slide_ms: int = 0  # 0: tumbling windows; else a window of window_ms ends every slide_ms
    #: Windows (and slide steps) start at UTC ms ``b`` with ``(b + shift) % step == 0``:
    #: 0 aligns them to the epoch (UTC midnight for days); 22.5 h starts days at 07:00 IST.
    window_shift_ms: int = 0
    #: The windows hold ``(start, end]``, a reading stamped on a boundary closing the window
    #: that ends there (a daily report at 07:00, an hour's total stamped at its end), not
    #: ``[start, end)``. Aligned windows (``align``/``tz`` in the rule file) are.
    window_closed_right: bool = False
    aggregate: Literal["max", "min", "mean", "sum", "count", "first", "last", "delta", "rate"] = (
        "max"
    )
    deadband: float = 0.0
    for_ms: int = 0
    stale_ms: int = 0  # 0 = no staleness check; else a silent gauge raises an alert
    qc: QcLimits | None = None
    #: When a level is left: ``window``, when the window that holds the high reading
    #: closes and its aggregate is back past the line by the deadband; ``reading``, on the
    #: first reading back past it (early-firing rules only: max above, min below).
    step_down: Literal["window", "reading"] = "window"
    # str.format templates; fields: station, name, metric, level, previous_level, value,
    # threshold, unit and every label of the station.
    summary: str = (
        "{name} ({station}): {metric} {value:.2f} {unit}, level {level} "
        "(was {previous_level}; threshold {threshold:.2f})"
    )
    resolved_summary: str = (
        "{name} ({station}): {metric} back to {value:.2f} {unit}, all clear from {previous_level}"
    )
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # station -> labels
    lang: Literal["zh", "en"] = "en"  # the summaries' language; level names follow it
    #: A rule on the derived ``aqi``: the method of its stations' AQI
    #: (``engine.evaluation.derive.aqi``).
    aqi_method: AqiMethod = DEFAULT_AQI_METHOD
    #: Thresholds that vary with the date, None when they do not. Then ``thresholds``
    #: holds the constant ones (NaN where a station's are dated) and every decision
    #: takes the thresholds in force at its own event time: a reading's at the reading,
    #: a window's close at the window's last instant (``end - 1``).
    calendar: ThresholdCalendar | None = None

    def __post_init__(self) -> None:
        if self.thresholds.shape != (len(self.stations), N_LEVELS):
            raise ValueError(
                f"rule {self.rule_id}: thresholds shape {self.thresholds.shape}, "
                f"expected ({len(self.stations)}, {N_LEVELS})"
            )
        if self.window_ms <= 0:
            raise ValueError(f"rule {self.rule_id}: window_ms must be positive")
        if self.slide_ms and (self.slide_ms < 0 or self.window_ms % self.slide_ms):
            raise ValueError(f"rule {self.rule_id}: slide_ms must divide window_ms")
        if not 0 <= self.window_shift_ms < (self.slide_ms or self.window_ms):
            raise ValueError(
                f"rule {self.rule_id}: window_shift_ms {self.window_shift_ms} outside "
                "0..window step"
            )
        if not 0 <= self.for_ms <= MAX_FOR_MS:
            raise ValueError(
                f"rule {self.rule_id}: for_ms {self.for_ms} outside 0..{MAX_FOR_MS} (49.7 days)"
            )
        if self.step_down == "reading" and (
            self.slide_ms or (self.aggregate, self.direction) not in (("max", 1), ("min", -1))
        ):
            raise ValueError(
                f"rule {self.rule_id}: step_down 'reading' needs a tumbling max window "
                "above, or min below"
            )
        if self.qc is not None and not 0 <= self.qc.flat_n <= MAX_FLAT_N:
            raise ValueError(
                f"rule {self.rule_id}: qc flat_n {self.qc.flat_n} outside 0..{MAX_FLAT_N} readings"
            )

    @property
    def kernel_shift_ms(self) -> int:
        """The shift the window kernels bucket with (they hold ``[start, end)``): the
        alignment, one ms earlier for windows closed on the right."""
        return (self.window_shift_ms - self.window_closed_right) % (self.slide_ms or self.window_ms)

    @cached_property
    def station_rows(self) -> Mapping[str, int]:
        """Station -> its row in ``stations`` (per-station arrays of the rule); built
        once per rule, not once per partition and runner."""
        return {station: i for i, station in enumerate(self.stations)}


@dataclass(frozen=True)
class CompiledCondition:
    """One clause of a compound rule: a window aggregate of ``metric`` against a
    per-station threshold (``above`` when direction is +1, ``below`` when -1)."""

    metric: str
    window_ms: int
    aggregate: str
    direction: Literal[1, -1]
    thresholds: npt.NDArray[np.float64]  # (n_stations,)


@dataclass(frozen=True)
class CompoundRule:
    """Raises ``level`` at a station when all (``mode="all"``) or any of its clauses
    hold, for at least ``for_ms``; clears when that no longer holds."""

    rule_id: str
    stations: tuple[str, ...]
    mode: Literal["all", "any"]
    conditions: tuple[CompiledCondition, ...]
    level: Level
    for_ms: int
    stale_ms: int
    summary: str
    resolved_summary: str
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    lang: Literal["zh", "en"] = "en"


@dataclass(frozen=True)
class DerivedMetric:
    """``metric`` computed per station from ``source`` (see ``schema.Derived``).

    pressure_head: ``sensor_elevation + source / 9.81`` (kPa -> m).
    linear_residual: ``source - (intercept + slope * against)`` where ``against`` is read
    at ``against_stations[i]`` (the station's reservoir).
    """

    rule_id: str
    metric: str
    op: Literal["pressure_head", "linear_residual"]
    source: str
    stations: tuple[str, ...]
    sensor_elevation: npt.NDArray[np.float64]  # (n,), NaN when unused
    against: str | None = None
    against_stations: tuple[str, ...] = ()
    intercept: npt.NDArray[np.float64] | None = None  # (n,)
    slope: npt.NDArray[np.float64] | None = None  # (n,)


@dataclass(frozen=True)
class CorroborationRule:
    """Raises ``level`` for a group when >= ``k`` of its stations are at >= ``min_level``
    of rule ``source_rule`` within ``within_ms`` of each other."""

    rule_id: str
    source_rule: str
    min_level: Level
    k: int
    groups: Mapping[str, tuple[str, ...]]  # group name ("" = whole selection) -> stations
    within_ms: int
    level: Level
    for_ms: int
    summary: str
    resolved_summary: str
    labels: Mapping[str, str] = field(default_factory=dict)
    lang: Literal["zh", "en"] = "en"

    @cached_property
    def groups_of_station(self) -> Mapping[str, tuple[str, ...]]:
        """Station -> the groups it belongs to: one lookup per alert, however large the
        groups (a basin may hold thousands of gauges)."""
        index: dict[str, list[str]] = {}
        for group, stations in self.groups.items():
            for station in stations:
                index.setdefault(station, []).append(group)
        return {station: tuple(groups) for station, groups in index.items()}


@dataclass(frozen=True)
class RuleSet:
    """All rules the engine runs, and a version that changes when any rule does."""

    rules: tuple[ThresholdRule, ...]
    version: str = "0"
    compound: tuple[CompoundRule, ...] = ()
    derived: tuple[DerivedMetric, ...] = ()
    corroboration: tuple[CorroborationRule, ...] = ()

    def for_metric(self, metric: str) -> tuple[ThresholdRule, ...]:
        return tuple(r for r in self.rules if r.metric == metric)

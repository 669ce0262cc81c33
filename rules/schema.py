"""The rule-file schema: what a hydrologist writes, validated into frozen models.

A rule file is ``{version: 1, rules: [...]}``. Each rule is one of three kinds, told
apart by its keys (see ``rule_model_for``):

- ``ThresholdSpec`` (``metric`` + ``levels``): one metric (or derived metric) of each
  selected station, a window aggregate, four colour levels each ``above:`` or ``below:``
  a number or ``station.<field> [+|- number]``.
- ``CompoundSpec`` (``all:`` or ``any:`` conditions): several metrics of one station,
  raising one ``level`` when all/any hold.
- ``CorroborationSpec`` (``corroborate:``): at least ``k`` stations of a group (basin,
  district, or the whole selection) at or above a level of another rule.

Units: thresholds, ``deadband`` and QC limits are in the metric's unit as written in the
station registry; durations are strings (``15m``) held as integer milliseconds.
Validation context ``{"station_fields": set[str]}`` lists the names ``station.<x>`` may
use (the registry's built-in and free fields); without it any well-formed name passes and
the registry checks catch it later.
"""

from __future__ import annotations

import string
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from engine.contracts.ruleset import MAX_FOR_MS, AqiMethod
from rules.durations import format_duration_ms
from rules.model import StrictModel
from rules.refs import LEVELS, Level, LevelName, Ref, Threshold
from rules.station import DurationMs, Kind, Station
from rules.times import parse_align, parse_tz

__all__ = [
    "LEVELS",
    "QC",
    "SUMMARY_FIELDS",
    "Aggregate",
    "CompoundSpec",
    "Condition",
    "Corroborate",
    "CorroborationSpec",
    "Derived",
    "LevelName",
    "LevelSpec",
    "Levels",
    "Ref",
    "RuleSpec",
    "Selection",
    "Summary",
    "ThresholdSpec",
    "Window",
    "rule_model_for",
]

#: Window aggregates. ``delta`` = last - first in the window (rate of rise per window).
Aggregate = Literal["max", "min", "mean", "sum", "last", "first", "count", "delta"]


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class Selection(StrictModel):
    """Which stations a rule applies to; every given criterion must hold (AND).

    Within one criterion a list means any of (OR). ``tags`` requires all listed tags.
    ``measures`` keeps stations whose registry ``metrics`` include that metric.
    """

    ids: list[str] | None = None
    kind: Annotated[list[Kind], BeforeValidator(_one_or_many)] | None = None
    tags: Annotated[list[str], BeforeValidator(_one_or_many)] | None = None
    basin: Annotated[list[str], BeforeValidator(_one_or_many)] | None = None
    district: Annotated[list[str], BeforeValidator(_one_or_many)] | None = None
    measures: str | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Selection:
        if not any(v is not None for v in self.__dict__.values()):
            raise ValueError(
                "select needs at least one of ids, kind, tags, basin, district, measures"
            )
        return self

    def matches(self, s: Station) -> bool:
        return (
            (self.ids is None or s.id in self.ids)
            and (self.kind is None or s.kind in self.kind)
            and (self.tags is None or set(self.tags) <= s.tags)
            and (self.basin is None or s.basin in self.basin)
            and (self.district is None or s.district in self.district)
            and (self.measures is None or self.measures in s.metrics)
        )


class Window(StrictModel):
    """``size`` (duration) and the ``aggregate`` over the readings in it.

    With ``every``, the window slides: a ``size`` window ending every ``every`` (a
    rolling 3-h rain total updated every 10 min is ``{size: 3h, every: 10m}``); without
    it, windows tumble one after the other.
    """

    size: DurationMs
    aggregate: Aggregate = "last"
    every: DurationMs | None = None
    #: Local time of day (``HH:MM``) at which the windows start, in ``tz`` (default
    #: midnight): Chinese daily rainfall counts 08:00-08:00 Beijing time (日雨量).
    align: str | None = None
    #: The zone of ``align`` (and of the day): an IANA name (``Asia/Shanghai``), a UTC
    #: offset (``+05:30``) or ``station``, each selected station's ``tz``. Default UTC.
    tz: str | None = None

    @field_validator("align")
    @classmethod
    def _align_is_a_time_of_day(cls, v: str | None) -> str | None:
        if v is not None:
            parse_align(v)
        return v

    @field_validator("tz")
    @classmethod
    def _tz_is_known(cls, v: str | None) -> str | None:
        if v is not None and v != "station":
            parse_tz(v)
        return v

    @model_validator(mode="after")
    def _every_divides_size(self) -> Window:
        if self.every is not None and (self.every <= 0 or self.size % self.every):
            raise ValueError(
                f"every: {format_duration_ms(self.every)} does not divide the window's size "
                f"{format_duration_ms(self.size)}"
            )
        return self


class LevelSpec(StrictModel):
    """Exactly one of ``above`` (value >= threshold) or ``below`` (value <= threshold)."""

    above: Threshold | None = None
    below: Threshold | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> LevelSpec:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of 'above' or 'below'")
        return self

    @property
    def direction(self) -> Literal[1, -1]:
        return 1 if self.above is not None else -1

    @property
    def ref(self) -> Ref:
        ref = self.above if self.above is not None else self.below
        assert ref is not None
        return ref


class Levels(StrictModel):
    """The four colours; at least one, all in the same direction."""

    blue: LevelSpec | None = None
    yellow: LevelSpec | None = None
    orange: LevelSpec | None = None
    red: LevelSpec | None = None

    @model_validator(mode="after")
    def _used_and_one_direction(self) -> Levels:
        used = self.used()
        if not used:
            raise ValueError("give at least one of blue, yellow, orange, red")
        first_name, first = used[0]
        for name, spec in used[1:]:
            if spec.direction != first.direction:
                word = "above" if first.direction == 1 else "below"
                raise ValueError(
                    f"{name} uses {'below' if word == 'above' else 'above'} but {first_name} "
                    f"uses {word}: all levels of a rule go the same direction"
                )
        return self

    def used(self) -> list[tuple[LevelName, LevelSpec]]:
        return [(n, s) for n in LEVELS if (s := getattr(self, n)) is not None]

    @property
    def direction(self) -> Literal[1, -1]:
        return self.used()[0][1].direction


class QC(StrictModel):
    """Reading checks before aggregation (metric's unit): range, step, flat line.

    ``min``/``max`` fail a reading outside them; ``max_step`` flags a change larger than
    it from the previous reading suspect; ``flatline`` fails a value unchanged this long.
    ``drop`` names the flags whose readings are left out of the windows (they neither
    raise nor clear a level). Failed and missing readings are always left out, so
    ``drop: [suspect]`` is the one choice it makes: suspect readings are left out too.
    """

    min: float | None = None
    max: float | None = None
    max_step: float | None = Field(default=None, gt=0)  # largest plausible change per reading
    flatline: DurationMs | None = None  # same value this long = stuck sensor
    drop: tuple[Literal["suspect", "fail", "missing"], ...] = ("fail", "missing")

    @model_validator(mode="after")
    def _range(self) -> QC:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"min {self.min:g} must be below max {self.max:g}")
        return self


#: Placeholders every summary may use; a rule's own ``labels`` keys are allowed too.
#: The engine (``engine/evaluation/processor.py``) formats with station, name, metric, level,
#: previous_level, value, threshold, unit and every label of the station: kind, name,
#: basin, district, unit and the rule's own ``labels``.
SUMMARY_FIELDS = frozenset(
    {
        "station",
        "name",
        "previous_level",
        "metric",
        "value",
        "level",
        "threshold",
        "unit",
        "kind",
        "basin",
        "district",
    }
)


class Summary(StrictModel):
    """Alert text in Chinese and English; ``{placeholders}`` see ``SUMMARY_FIELDS``."""

    zh: str
    en: str

    @field_validator("zh", "en")
    @classmethod
    def _parses(cls, text: str) -> str:
        try:
            list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(f"bad template: {exc}") from exc
        return text


class Derived(StrictModel):
    """A metric computed from others of the same station (or its reservoir).

    - ``pressure_head``: ``station.sensor_elevation + from / 9.81`` (kPa -> m of water).
    - ``linear_residual``: ``from - (intercept + slope * against)``; ``against`` is a metric
      of the station's reservoir (``Station.reservoir``), e.g. seepage level against
      reservoir level; intercept and slope are numbers or ``station.<field>``.
    """

    op: Literal["pressure_head", "linear_residual"]
    from_: str = Field(alias="from")
    against: str | None = None
    intercept: Threshold | None = None
    slope: Threshold | None = None

    @model_validator(mode="after")
    def _operands(self) -> Derived:
        if self.op == "linear_residual" and (
            self.against is None or self.intercept is None or self.slope is None
        ):
            raise ValueError("linear_residual needs 'against', 'intercept' and 'slope'")
        return self


class RuleBase(StrictModel):
    """What every rule kind has. ``for_ms``: how long a condition must hold first."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    select: Selection
    for_ms: DurationMs | None = Field(default=None, alias="for")
    stale_ms: DurationMs | None = Field(default=None, alias="stale")
    labels: dict[str, str] = Field(default_factory=dict)
    summary: Summary | None = None  # text of a level transition (firing)
    all_clear: Summary | None = None  # text when the series returns to no level

    @field_validator("for_ms")
    @classmethod
    def _for_fits_the_engine(cls, v: int | None) -> int | None:
        # The engine's `for` clocks are 32-bit counts of ms (engine.contracts.ruleset.MAX_FOR_MS).
        if v is not None and v > MAX_FOR_MS:
            raise ValueError(
                f"at most 49 days (the engine's longest `for`), got {format_duration_ms(v)}"
            )
        return v


class ThresholdSpec(RuleBase):
    """One metric per station against four levels. ``deadband`` in the metric's unit.

    ``aqi_method`` (rules on ``aqi`` only): how the engine derives the hourly AQI of the
    selected stations from their pollutants (``engine.evaluation.derive.aqi``): ``hj633_24h``
    (default; PM on 24-h moving means, as Beijing publishes) or ``cnemc_hourly`` (PM on
    1-h values against the 24-h breakpoints, as CNEMC's national real-time release).
    """

    metric: str
    unit: str | None = None
    derive: Derived | None = None
    window: Window
    levels: Levels
    deadband: float = Field(default=0.0, ge=0)
    qc: QC | None = None
    aqi_method: AqiMethod | None = None
    #: When a level is left (``engine.contracts.ruleset.ThresholdRule.step_down``):
    #: ``window`` (the default) or ``reading``; ``rules check`` allows ``reading`` on a
    #: tumbling ``max`` window above, or ``min`` below.
    step_down: Literal["window", "reading"] = "window"

    @model_validator(mode="after")
    def _aqi_method_on_aqi(self) -> ThresholdSpec:
        if self.aqi_method is not None and self.metric != "aqi":
            raise ValueError(f"aqi_method applies to rules on metric 'aqi', not {self.metric!r}")
        return self


class Condition(StrictModel):
    """One clause of a compound rule: ``metric`` window aggregate above/below a threshold."""

    metric: str
    unit: str | None = None
    window: Window
    above: Threshold | None = None
    below: Threshold | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of 'above' or 'below'")
        return self


class CompoundSpec(RuleBase):
    """Several metrics of one station; raises ``level`` when ``all`` (or ``any``) hold."""

    all: list[Condition] | None = Field(default=None, min_length=1)
    any: list[Condition] | None = Field(default=None, min_length=1)
    level: Level

    @model_validator(mode="after")
    def _one_mode(self) -> CompoundSpec:
        if (self.all is None) == (self.any is None):
            raise ValueError("give exactly one of 'all' or 'any'")
        return self

    @property
    def conditions(self) -> list[Condition]:
        return self.all if self.all is not None else (self.any or [])


class Corroborate(StrictModel):
    """``k`` stations of a group at or above ``level`` of rule ``rule`` within ``within``."""

    rule: str
    level: Level
    k: int = Field(ge=1)
    group_by: Literal["basin", "district"] | None = None
    within: DurationMs


class CorroborationSpec(RuleBase):
    """Corroboration across stations: raises ``level`` for the whole group."""

    corroborate: Corroborate
    level: Level


RuleSpec = ThresholdSpec | CompoundSpec | CorroborationSpec


def rule_model_for(raw: Any) -> type[ThresholdSpec] | type[CompoundSpec] | type[CorroborationSpec]:
    """The rule kind, told by its keys: ``corroborate`` > ``all``/``any`` > threshold."""
    if isinstance(raw, dict):
        if "corroborate" in raw:
            return CorroborationSpec
        if "all" in raw or "any" in raw:
            return CompoundSpec
    return ThresholdSpec

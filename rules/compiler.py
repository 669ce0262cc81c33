"""Validated rules + registry -> what the engine runs.

Contract: ``compile_rules(files, registry, lang)`` expects rules that passed the schema
and ``checks.check_rules`` (use ``rules.api.load_ruleset`` to get both); a station that
lacks a referenced field then cannot occur, so NaN in the output only ever means "level
not used by this rule". Rows follow registry order; columns are blue, yellow, orange,
red (``engine.contracts.alerts.Level`` - 1).

Threshold rules whose aggregate ``engine.contracts.ruleset.ThresholdRule`` accepts become
ThresholdRules in ``Compiled.ruleset``; the rest go to the dataclasses of
``rules.compiled`` until the engine grows kernels for them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_type_hints

import numpy as np

from engine.contracts.alerts import Level
from engine.contracts.ruleset import N_LEVELS, QcLimits, RuleSet, ThresholdRule
from rules.checks import selected_stations, window_shift
from rules.compiled import (
    CompiledCondition,
    CompoundRule,
    CorroborationRule,
    DerivedMetric,
)
from rules.dated import DatedCalendar, RuleCurve
from rules.loader import RuleFile
from rules.registry import Registry
from rules.schema import (
    Aggregate,
    CompoundSpec,
    CorroborationSpec,
    Ref,
    RuleSpec,
    Summary,
    ThresholdSpec,
)
from rules.station import Station
from rules.threshold_checks import per_station

__all__ = ["Compiled", "compile_rules"]

# Every aggregate a rule file may name is one the engine runs.
assert set(get_args(Aggregate)) <= set(get_args(get_type_hints(ThresholdRule)["aggregate"]))
_ENGINE_DEFAULTS = {f.name: str(f.default) for f in fields(ThresholdRule) if "summary" in f.name}
#: Chinese defaults; in English the engine's own ThresholdRule defaults apply.
_DEFAULT_ZH = {
    "summary": "{name}({station}){metric} {value:.2f} {unit},{level}预警(阈值 {threshold:.2f})",
    "all_clear": "{name}({station}){metric} 回落至 {value:.2f} {unit},{previous_level}预警解除",
}


@dataclass(frozen=True)
class Compiled:
    """Everything compiled from a set of rule files against one registry."""

    ruleset: RuleSet
    derived: tuple[DerivedMetric, ...] = ()
    compound: tuple[CompoundRule, ...] = ()
    corroboration: tuple[CorroborationRule, ...] = ()
    #: The checks' warnings (``file:line:col: warning: ...``): the rules load anyway.
    warnings: tuple[str, ...] = ()


def compile_rules(
    files: Iterable[RuleFile], registry: Registry, lang: Literal["zh", "en"] = "zh"
) -> Compiled:
    """Compile checked rules; ``lang`` ("zh" or "en") picks the summary text.

    A rule whose selection matches no station of ``registry`` is left out (a warning of
    the checks: it would evaluate nothing), and so is a basin rule over a rule left out.
    """
    files = list(files)
    skipped: set[str] = set()
    out: dict[str, list[Any]] = {k: [] for k in ("rules", "derived", "compound", "corr")}
    digest = hashlib.blake2b(digest_size=8)
    for station in registry:  # the version changes when a station's values do
        digest.update(station.model_dump_json().encode())
        for dated in station.dated_fields().values():  # a curve's CSV is not in the dump
            if isinstance(dated, RuleCurve):
                digest.update(repr(dated.points()).encode())
    for rule in (r for f in files for r in f.rules):
        spec = rule.spec
        stations = selected_stations(rule, registry)
        digest.update(spec.model_dump_json(by_alias=True).encode())
        if not stations or (
            isinstance(spec, CorroborationSpec) and spec.corroborate.rule in skipped
        ):
            skipped.add(spec.id)
            continue
        if isinstance(spec, ThresholdSpec):
            out["rules"].append(_threshold(spec, stations, lang))
            if spec.derive is not None:
                out["derived"].append(_derived(spec, stations, registry))
        elif isinstance(spec, CompoundSpec):
            out["compound"].append(_compound(spec, stations, lang))
        elif isinstance(spec, CorroborationSpec):
            out["corr"].append(_corroboration(spec, stations, lang))
    return Compiled(
        ruleset=RuleSet(
            tuple(out["rules"]),
            version=digest.hexdigest(),
            compound=tuple(out["compound"]),
            derived=tuple(out["derived"]),
            corroboration=tuple(out["corr"]),
        ),
        derived=tuple(out["derived"]),
        compound=tuple(out["compound"]),
        corroboration=tuple(out["corr"]),
    )


def _texts(spec: RuleSpec, lang: str) -> dict[str, str]:
    """``summary`` and ``resolved_summary`` keyword arguments for a compiled rule."""
    out = {}
    for key, arg in (("summary", "summary"), ("all_clear", "resolved_summary")):
        given: Summary | None = getattr(spec, key)
        if given is not None:
            out[arg] = str(getattr(given, lang))
        elif lang == "zh":
            out[arg] = _DEFAULT_ZH[key]
        else:
            out[arg] = _ENGINE_DEFAULTS[arg]
    return out


def _labels(
    stations: Sequence[Station], unit: str | None, extra: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    return {s.id: {**s.labels(), **({"unit": unit} if unit else {}), **extra} for s in stations}


def _qc_limits(spec: ThresholdSpec, stations: Sequence[Station]) -> QcLimits | None:
    """The engine's QC limits; a flat-line duration becomes a count of reports at the
    fastest reporting interval among the rule's stations (at least 3; ``rules check``
    refuses a flat-line test when no selected station has a reporting interval)."""
    q = spec.qc
    if q is None:
        return None
    flat_n = 0
    if q.flatline:
        intervals = [s.report_interval_ms for s in stations if s.report_interval_ms]
        flat_n = max(3, q.flatline // min(intervals)) if intervals else 0
    return QcLimits(q.min, q.max, q.max_step, flat_n, drop_suspect="suspect" in q.drop)


def _threshold(spec: ThresholdSpec, stations: Sequence[Station], lang: str) -> ThresholdRule:
    thresholds = np.full((len(stations), N_LEVELS), np.nan, dtype=np.float64)
    cells = []  # thresholds that vary with the date (rules.dated)
    for name, level in spec.levels.used():
        col = Level.parse(name) - 1
        thresholds[:, col] = per_station(level.ref, stations)
        field = level.ref.field
        for row, station in enumerate(stations if field is not None else ()):
            dated = station.dated(field) if field is not None else None
            if dated is not None:
                cells.append((row, col, dated, level.ref.offset))
    if spec.derive is not None:
        unit = "m" if spec.derive.op == "pressure_head" else None
        unit = unit or next((s.metrics.get(spec.derive.from_) for s in stations), None)
    else:
        unit = next((s.metrics.get(spec.metric) for s in stations), None)
    kwargs: dict[str, Any] = dict(
        rule_id=spec.id,
        metric=spec.metric,
        stations=tuple(s.id for s in stations),
        thresholds=thresholds,
        direction=spec.levels.direction,
        window_ms=spec.window.size,
        aggregate=spec.window.aggregate,
        deadband=spec.deadband,
        for_ms=spec.for_ms or 0,
        stale_ms=spec.stale_ms or 0,
        **_texts(spec, lang),
        labels=_labels(stations, unit or spec.unit, spec.labels),
        qc=_qc_limits(spec, stations),
        slide_ms=spec.window.every or 0,
        window_shift_ms=window_shift(spec.window, stations),
        window_closed_right=spec.window.align is not None or spec.window.tz is not None,
        step_down=spec.step_down,
        lang="zh" if lang == "zh" else "en",
    )
    if spec.aqi_method is not None:
        kwargs["aqi_method"] = spec.aqi_method
    if cells:
        kwargs["calendar"] = DatedCalendar(thresholds, cells)
    return ThresholdRule(**kwargs)


def _derived(spec: ThresholdSpec, stations: Sequence[Station], registry: Registry) -> DerivedMetric:
    d = spec.derive
    assert d is not None
    return DerivedMetric(
        rule_id=spec.id,
        metric=spec.metric,
        op=d.op,
        source=d.from_,
        stations=tuple(s.id for s in stations),
        sensor_elevation=per_station(Ref(field="sensor_elevation"), stations),
        against=d.against,
        against_stations=tuple(s.reservoir or "" for s in stations) if d.against else (),
        intercept=per_station(d.intercept, stations) if d.intercept else None,
        slope=per_station(d.slope, stations) if d.slope else None,
    )


def _compound(spec: CompoundSpec, stations: Sequence[Station], lang: str) -> CompoundRule:
    conditions = tuple(
        CompiledCondition(
            metric=c.metric,
            window_ms=c.window.size,
            aggregate=c.window.aggregate,
            direction=1 if c.above is not None else -1,
            thresholds=per_station(c.above if c.above is not None else c.below, stations),
        )
        for c in spec.conditions
    )
    return CompoundRule(
        rule_id=spec.id,
        stations=tuple(s.id for s in stations),
        mode="all" if spec.all is not None else "any",
        conditions=conditions,
        level=Level.parse(spec.level),
        for_ms=spec.for_ms or 0,
        stale_ms=spec.stale_ms or 0,
        **_texts(spec, lang),
        labels=_labels(stations, None, spec.labels),
        lang="zh" if lang == "zh" else "en",
    )


def _corroboration(
    spec: CorroborationSpec, stations: Sequence[Station], lang: str
) -> CorroborationRule:
    c = spec.corroborate
    groups: dict[str, list[str]] = {}
    for s in stations:
        key = (getattr(s, c.group_by) or "") if c.group_by else ""
        groups.setdefault(key, []).append(s.id)
    return CorroborationRule(
        rule_id=spec.id,
        source_rule=c.rule,
        min_level=Level.parse(c.level),
        k=c.k,
        groups={g: tuple(ids) for g, ids in groups.items()},
        within_ms=c.within,
        level=Level.parse(spec.level),
        for_ms=spec.for_ms or 0,
        **_texts(spec, lang),
        labels=dict(spec.labels),
        lang="zh" if lang == "zh" else "en",
    )

"""Semantic checks of validated rules against the station registry.

The schema says a rule is well formed; these say it makes sense for the stations it
selects. Each check returns ``Problem``s pointing at the key to change:

- selection matches no station (a warning: the rule is not evaluated at this site, a
  shipped pack must still load); ``select.ids`` names an unknown station;
- a selected station does not report the metric; the rule's ``unit`` differs from the
  registry's unit for the metric;
- ``window.size`` shorter than a station's reporting interval (the window may hold no
  reading at all);
- a ``station.<field>`` that some selected stations lack (they are named);
- levels out of order at some station, evaluated with that station's values: thresholds
  must not fall from blue to red for ``above`` nor rise for ``below`` (equal is allowed:
  NWS flood and moderate stage are both 20 ft at Oso Creek);
- summary placeholders that the engine will not fill;
- corroboration of an unknown rule; ``k`` larger than a group (a warning: that group
  cannot reach ``k`` until the registry gives it more gauges);
- keys the engine would not honour: ``stale`` on a compound or corroboration rule (their
  silence is watched by the threshold rules on the same gauges), ``every`` on a compound
  rule's condition (its clauses tumble), a ``qc.flatline`` when no selected station has a
  ``report_interval`` to count it in readings; and two rules on ``aqi`` that give one
  station different ``aqi_method``s; ``step_down: reading`` on a window other than a
  tumbling ``max`` above or ``min`` below.

Without a registry, only the checks that need no station run.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from dataclasses import replace

from engine.contracts.ruleset import DEFAULT_AQI_METHOD
from rules.durations import format_duration_ms
from rules.errors import Problem, did_you_mean
from rules.loader import LoadedRule, RuleFile
from rules.registry import Registry
from rules.schema import (
    SUMMARY_FIELDS,
    CompoundSpec,
    Condition,
    CorroborationSpec,
    Ref,
    ThresholdSpec,
    Window,
)
from rules.source import Key
from rules.station import Station
from rules.threshold_checks import level_order, missing_field, name_some
from rules.times import parse_align, parse_tz, window_shift_ms

__all__ = ["check_rules", "selected_stations", "window_shift"]


_DERIVED_UNIT = {"pressure_head": "m"}


def selected_stations(rule: LoadedRule, registry: Registry) -> tuple[Station, ...]:
    return registry.select(rule.spec.select.matches)


def check_rules(files: Iterable[RuleFile], registry: Registry | None) -> list[Problem]:
    """Every semantic problem of the given (already schema-valid) rules."""
    files = list(files)
    all_rules = [r for f in files for r in f.rules]
    problems: list[Problem] = []
    seen: dict[str, LoadedRule] = {}
    for rule in all_rules:
        first = seen.setdefault(rule.spec.id, rule)
        if first is not rule:
            where = f"{first.source.file}:{first.source.position(first.base)[0]}"
            problems.append(
                rule.problem(("id",), f"duplicate rule id {rule.spec.id!r} (first at {where})")
            )
    thresholds = {r.spec.id: r for r in all_rules if isinstance(r.spec, ThresholdSpec)}
    for rule in all_rules:
        problems += _check_summary(rule)
        stations = selected_stations(rule, registry) if registry is not None else None
        if registry is not None and stations is not None:
            problems += _check_selection(rule, registry, stations)
        spec = rule.spec
        if isinstance(spec, ThresholdSpec):
            problems += _check_threshold(rule, spec, registry, stations)
        elif isinstance(spec, CompoundSpec):
            problems += _not_honoured_stale(rule, "compound")
            for i, cond in enumerate(spec.conditions):
                mode = "all" if spec.all is not None else "any"
                problems += _check_condition(rule, (mode, i), cond, stations)
        elif isinstance(spec, CorroborationSpec):
            problems += _not_honoured_stale(rule, "corroboration")
            problems += _check_corroboration(rule, spec, thresholds, stations)
    if registry is not None:
        problems += _aqi_methods(all_rules, registry)
    return problems


def _not_honoured_stale(rule: LoadedRule, kind: str) -> list[Problem]:
    if rule.spec.stale_ms is None:
        return []
    msg = (
        f"a {kind} rule has no silence check; put 'stale' on the threshold rules of the "
        "metrics it reads"
    )
    return [rule.problem(("stale",), msg)]


def _aqi_methods(rules: Sequence[LoadedRule], registry: Registry) -> list[Problem]:
    """One AQI per station: every rule on ``aqi`` that selects it names the same method."""
    out: list[Problem] = []
    method_of: dict[str, tuple[str, LoadedRule]] = {}
    for rule in rules:
        spec = rule.spec
        if not isinstance(spec, ThresholdSpec) or spec.metric != "aqi" or spec.derive:
            continue
        clash = []
        for s in selected_stations(rule, registry):
            mine = spec.aqi_method or DEFAULT_AQI_METHOD
            method, first = method_of.setdefault(s.id, (mine, rule))
            if method != mine:
                clash.append((s.id, method, first.spec.id))
        if clash:
            _, method, other = clash[0]
            ids = name_some([c[0] for c in clash])
            name = f"aqi_method {mine!r}" if spec.aqi_method else f"the default aqi_method {mine!r}"
            msg = (
                f"{name} differs from {method!r} of rule {other!r} at {ids}: a station's "
                "AQI is computed one way"
            )
            out.append(rule.problem(("aqi_method",), msg))
    return out


def _check_selection(
    rule: LoadedRule, registry: Registry, stations: Sequence[Station]
) -> list[Problem]:
    out = []
    for i, sid in enumerate(rule.spec.select.ids or ()):
        if sid not in registry:
            hint = did_you_mean(sid, (s.id for s in registry))
            out.append(rule.problem(("select", "ids", i), f"unknown station {sid!r}{hint}"))
    if not stations:
        msg = f"selection matches no station in {registry.file}: the rule is not evaluated"
        out.append(replace(rule.problem(("select",), msg), warning=True))
    return out


def _check_threshold(
    rule: LoadedRule,
    spec: ThresholdSpec,
    registry: Registry | None,
    stations: Sequence[Station] | None,
) -> list[Problem]:
    out: list[Problem] = []
    refs: list[tuple[tuple[Key, ...], Ref]] = [
        (("levels", name, "above" if lvl.direction == 1 else "below"), lvl.ref)
        for name, lvl in spec.levels.used()
    ]
    if stations is not None:
        if spec.derive is None:
            out += _metric_and_unit(rule, ("metric",), spec.metric, spec.unit, stations)
        else:
            out += _check_derived(rule, spec, registry, stations)
        out += _window(rule, ("window", "size"), spec.window, stations)
        for path, ref in refs:
            out += missing_field(rule, path, ref, stations, dated_ok=True)
        flatline = spec.qc is not None and spec.qc.flatline
        if flatline and stations and not any(s.report_interval_ms for s in stations):
            msg = (
                "no selected station has a report_interval, so the flat-line test "
                "cannot count readings; set report_interval in the station registry"
            )
            out.append(rule.problem(("qc", "flatline"), msg))
    out += level_order(rule, spec, refs, stations)
    out += _step_down(rule, spec)
    out += _alignment(rule, spec.window, stations)
    return out


def _alignment(
    rule: LoadedRule, window: Window, stations: Sequence[Station] | None
) -> list[Problem]:
    """The window's alignment resolves to one shift (``window_shift``)."""
    if window.tz == "station" and stations is None:
        return []  # without a registry there is no station zone to check
    try:
        window_shift(window, stations or ())
    except ValueError as e:
        return [rule.problem(("window", "tz" if window.tz else "align"), str(e))]
    return []


def window_shift(window: Window, stations: Sequence[Station]) -> int:
    """The rule's ``window_shift_ms`` (``engine.contracts.ruleset.ThresholdRule``): windows
    start at ``window.align`` local time in ``window.tz``; with ``tz: station``, in every
    selected station's zone, which must give them all the same boundaries (one shift per
    rule: stations in other zones go in a rule of their own). ValueError otherwise."""
    if window.align is None and window.tz is None:
        return 0
    step = window.every or window.size
    align = parse_align(window.align) if window.align is not None else 0
    if window.tz != "station":
        return window_shift_ms(step, align, parse_tz(window.tz or "UTC"))
    lacking = [s.id for s in stations if s.tz is None]
    if lacking:
        raise ValueError(f"'station': no tz in the registry for {name_some(lacking)}")
    by_shift: dict[int, list[str]] = {}
    for s in stations:
        assert s.tz is not None
        by_shift.setdefault(window_shift_ms(step, align, parse_tz(s.tz)), []).append(s.id)
    if len(by_shift) > 1:
        groups = "; ".join(name_some(ids) for ids in by_shift.values())
        raise ValueError(
            f"'station': the selected stations' zones start these windows at different "
            f"times ({groups}); select each zone's stations in a rule of its own"
        )
    return next(iter(by_shift), 0)


def _step_down(rule: LoadedRule, spec: ThresholdSpec) -> list[Problem]:
    """``step_down: reading`` needs a window whose running aggregate only moves toward
    the lines (max above, min below) and that tumbles: the early-firing kernel's."""
    if spec.step_down != "reading":
        return []
    w, direction = spec.window, spec.levels.direction
    fits = (w.aggregate, direction) in (("max", 1), ("min", -1)) and w.every is None
    if fits:
        return []
    side = "above" if direction == 1 else "below"
    have = f"a {'sliding ' if w.every else ''}{w.aggregate} window {side}"
    msg = f"'reading' needs a tumbling max window above, or min below; this is {have}"
    return [rule.problem(("step_down",), msg)]


def _check_derived(
    rule: LoadedRule, spec: ThresholdSpec, registry: Registry | None, stations: Sequence[Station]
) -> list[Problem]:
    derive = spec.derive
    assert derive is not None and registry is not None
    out = _metric_and_unit(rule, ("derive", "from"), derive.from_, None, stations)
    unit = _DERIVED_UNIT.get(derive.op) or _unit_of(derive.from_, stations)
    if spec.unit is not None and unit is not None and spec.unit != unit:
        out.append(
            rule.problem(("unit",), f"unit {spec.unit!r} does not match {derive.op}'s {unit!r}")
        )
    if derive.op == "pressure_head":
        out += missing_field(rule, ("derive", "op"), Ref(field="sensor_elevation"), stations)
    else:
        lacking = [s.id for s in stations if s.reservoir is None]
        if lacking:
            out.append(
                rule.problem(("derive", "against"), f"no reservoir set for {name_some(lacking)}")
            )
        reservoirs = [
            registry.get(s.reservoir) for s in stations if s.reservoir and s.reservoir in registry
        ]
        unknown = [
            s.id for s in stations if s.reservoir is not None and s.reservoir not in registry
        ]
        if unknown:
            msg = f"reservoir of {name_some(unknown)} is not in the registry"
            out.append(rule.problem(("derive", "against"), msg))
        assert derive.against is not None
        out += _metric_and_unit(rule, ("derive", "against"), derive.against, None, reservoirs)
        for key in ("intercept", "slope"):
            ref = getattr(derive, key)
            out += missing_field(rule, ("derive", key), ref, stations)
    return out


def _check_condition(
    rule: LoadedRule, base: tuple[Key, ...], cond: Condition, stations: Sequence[Station] | None
) -> list[Problem]:
    out = []
    if cond.window.every is not None:
        msg = "a compound rule's conditions use tumbling windows; 'every' is not supported here"
        out.append(rule.problem((*base, "window", "every"), msg))
    for key in ("align", "tz"):
        if getattr(cond.window, key) is not None:
            msg = (
                f"a compound rule's windows are aligned to UTC; '{key}' is not supported "
                "here (align the threshold rules instead)"
            )
            out.append(rule.problem((*base, "window", key), msg))
    if stations is None:
        return out
    ref, word = (cond.above, "above") if cond.above is not None else (cond.below, "below")
    assert ref is not None
    return [
        *out,
        *_metric_and_unit(rule, (*base, "metric"), cond.metric, cond.unit, stations),
        *_window(rule, (*base, "window", "size"), cond.window, stations),
        *missing_field(rule, (*base, word), ref, stations),
    ]


def _check_corroboration(
    rule: LoadedRule,
    spec: CorroborationSpec,
    thresholds: dict[str, LoadedRule],
    stations: Sequence[Station] | None,
) -> list[Problem]:
    c = spec.corroborate
    if c.rule not in thresholds:
        hint = did_you_mean(c.rule, thresholds)
        return [rule.problem(("corroborate", "rule"), f"no threshold rule {c.rule!r}{hint}")]
    if stations is None:
        return []
    out = []
    if c.group_by is not None:
        lacking = [s.id for s in stations if getattr(s, c.group_by) is None]
        if lacking:
            msg = f"{c.group_by} is not set for {name_some(lacking)}"
            out.append(rule.problem(("corroborate", "group_by"), msg))
    groups: dict[str | None, int] = {}
    for s in stations:
        key = getattr(s, c.group_by) if c.group_by else None
        groups[key] = groups.get(key, 0) + 1
    small = sorted(str(g) for g, n in groups.items() if n < c.k and g is not None)
    if c.group_by is None and stations and len(stations) < c.k:
        msg = f"k {c.k} is more than the {len(stations)} selected stations: it cannot fire"
        out.append(replace(rule.problem(("corroborate", "k"), msg), warning=True))
    elif small:
        msg = (
            f"k {c.k} is more than the stations of {c.group_by} {name_some(small)}: "
            "it cannot fire there"
        )
        out.append(replace(rule.problem(("corroborate", "k"), msg), warning=True))
    return out


def _unit_of(metric: str, stations: Sequence[Station]) -> str | None:
    units = {s.metrics[metric] for s in stations if metric in s.metrics}
    return units.pop() if len(units) == 1 else None


def _metric_and_unit(
    rule: LoadedRule,
    path: tuple[Key, ...],
    metric: str,
    unit: str | None,
    stations: Sequence[Station],
) -> list[Problem]:
    out = []
    lacking = [s.id for s in stations if metric not in s.metrics]
    if lacking:
        known = {m for s in stations for m in s.metrics}
        hint = "" if metric in known else did_you_mean(metric, known)
        msg = f"{metric!r} is not reported by {name_some(lacking)}{hint}"
        out.append(rule.problem(path, msg))
    if unit is not None:
        wrong: dict[str, list[str]] = {}
        for s in stations:
            if metric in s.metrics and s.metrics[metric] != unit:
                wrong.setdefault(s.metrics[metric], []).append(s.id)
        for reg_unit, ids in sorted(wrong.items()):
            msg = (
                f"unit {unit!r} does not match the registry's {reg_unit!r} for {metric} "
                f"at {name_some(ids)}"
            )
            out.append(rule.problem((*path[:-1], "unit"), msg))
    return out


def _window(
    rule: LoadedRule, path: tuple[Key, ...], window: Window, stations: Sequence[Station]
) -> list[Problem]:
    short = [
        s
        for s in stations
        if s.report_interval_ms is not None and window.size < s.report_interval_ms
    ]
    if not short:
        return []
    interval = max(s.report_interval_ms or 0 for s in short)
    msg = (
        f"window {format_duration_ms(window.size)} is shorter than the reporting interval "
        f"{format_duration_ms(interval)} of {name_some([s.id for s in short])}"
    )
    return [rule.problem(path, msg)]


def _check_summary(rule: LoadedRule) -> list[Problem]:
    allowed = SUMMARY_FIELDS | set(rule.spec.labels)
    out = []
    for key in ("summary", "all_clear"):
        summary = getattr(rule.spec, key)
        for lang in ("zh", "en") if summary is not None else ():
            for _, name, _, _ in string.Formatter().parse(getattr(summary, lang)):
                if name is None:
                    continue
                field = name.split(".")[0].split("[")[0]
                if field not in allowed:
                    msg = f"unknown placeholder {{{field}}}{did_you_mean(field, allowed)}"
                    out.append(rule.problem((key, lang), msg))
    return out

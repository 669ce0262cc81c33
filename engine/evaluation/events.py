"""Alert events from the processor's transitions: level changes, health changes and
compound rules, each with its text in the rule's language."""

from __future__ import annotations

from collections.abc import Mapping

from engine.contracts.alerts import AlertEvent, Level, transition_event
from engine.contracts.ruleset import CompoundRule, ThresholdRule
from engine.evaluation.compound import CompoundChange
from engine.evaluation.health import HealthChange, health_summary
from engine.evaluation.runners.base import RawTransition

__all__ = ["compound_event", "format_text", "health_event", "level_event"]

NAN = float("nan")

# The four-colour warning scale as Chinese alerts name it (蓝色预警 ... 红色预警).
_LEVEL_ZH = {
    Level.NONE: "无",
    Level.BLUE: "蓝色",
    Level.YELLOW: "黄色",
    Level.ORANGE: "橙色",
    Level.RED: "红色",
}
_LEVEL_EN = {lv: lv.label for lv in Level}


def format_text(
    template: str, lang: str, station: str, metric: str, labels: Mapping[str, str],
    level: Level, previous: Level, value: float, threshold: float,
) -> str:  # fmt: skip
    """Fill an alert text; a broken template never drops the alert, it says so instead."""
    names = _LEVEL_ZH if lang == "zh" else _LEVEL_EN
    fields = {
        "station": station,
        "name": labels.get("name", station),
        "metric": metric,
        "level": names[level],
        "previous_level": names[previous],
        "value": value,
        "threshold": threshold,
        "unit": labels.get("unit", ""),
        **labels,
    }
    try:
        return template.format(**fields)
    except (KeyError, ValueError, IndexError) as exc:
        return f"{station} {metric} {level.label} {value:g} (summary template error: {exc})"


def level_event(rule: ThresholdRule, station: str, tr: RawTransition) -> AlertEvent:
    level, previous = Level(tr.to_level), Level(tr.from_level)
    labels = rule.labels.get(station, {})
    template = rule.resolved_summary if level is Level.NONE else rule.summary
    text = format_text(
        template, rule.lang, station, rule.metric, labels, level, previous, tr.value,
        tr.threshold,
    )  # fmt: skip
    return transition_event(
        rule.rule_id, station, rule.metric, level, previous, tr.started_at, tr.at, tr.value,
        tr.threshold, text, labels,
    )  # fmt: skip


def health_event(rule: ThresholdRule, station: str, ch: HealthChange) -> AlertEvent:
    """A QC-failure or silence alert: its own series (``<rule>#qc``, ``<rule>#silent``),
    at the lowest level, blue, so that it informs without outranking the water."""
    labels = {**rule.labels.get(station, {}), "health": ch.kind}
    level, previous = (Level.BLUE, Level.NONE) if ch.firing else (Level.NONE, Level.BLUE)
    at = ch.at
    if ch.kind == "silent" and not ch.firing:
        # Never before the silence it ends: raised on the wall clock while the device
        # was buffering, it is ended by a backlog whose first reading is older.
        at = max(at, ch.since + rule.stale_ms)
    return transition_event(
        f"{rule.rule_id}#{ch.kind}", station, rule.metric, level, previous, ch.since, at,
        ch.value, NAN, health_summary(rule, station, labels, ch), labels,
    )  # fmt: skip


def compound_event(rule: CompoundRule, ch: CompoundChange) -> AlertEvent:
    metric = "+".join(c.metric for c in rule.conditions)
    labels = rule.labels.get(ch.station, {})
    level, previous = (rule.level, Level.NONE) if ch.firing else (Level.NONE, rule.level)
    template = rule.summary if ch.firing else rule.resolved_summary
    text = format_text(template, rule.lang, ch.station, metric, labels, level, previous, NAN, NAN)
    return transition_event(
        rule.rule_id, ch.station, metric, level, previous, ch.since, ch.at, NAN, NAN, text,
        labels,
    )  # fmt: skip

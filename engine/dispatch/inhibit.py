"""Inhibition: an active alert covers others that say less (Alertmanager's inhibit rules).

Contract: ``inhibited(rules, alerts)`` takes the active alerts as ``(fingerprint,
labels, level)`` (labels as ``router.labels_of``, ``level`` a ``Level`` value) and
returns ``{fingerprint: rule name}`` for every alert covered: it matches a rule's
``target``, another alert matching the rule's ``source`` has the same values of the
``equal`` labels (a label an alert lacks is ""), and, for ``level: at_or_below`` /
``below``, the source's level is at least / above the target's. An alert never covers
itself. Only active alerts take part: an all-clear is always told to whoever heard the
alert fire.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.dispatch.config import InhibitRule
from engine.dispatch.matchers import matches_all

__all__ = ["inhibited"]

Alert = tuple[str, Mapping[str, str], int]


def inhibited(rules: Sequence[InhibitRule], alerts: Sequence[Alert]) -> dict[str, str]:
    covered: dict[str, str] = {}
    for rule in rules:
        # per value of the equal labels: the two strongest sources, so that a target
        # that is itself a source is judged by the strongest *other* one
        sources: dict[tuple[str, ...], list[tuple[int, str]]] = {}
        for fp, labels, level in alerts:
            if matches_all(rule.source, labels):
                top = sources.setdefault(_key(rule, labels), [])
                top.append((level, fp))
                top.sort(reverse=True)
                del top[2:]
        if not sources:
            continue
        for fp, labels, level in alerts:
            if fp in covered or not matches_all(rule.target, labels):
                continue
            top = [s for s in sources.get(_key(rule, labels), ()) if s[1] != fp]
            if not top:
                continue
            strongest = top[0][0]
            if (
                rule.level == "any"
                or (rule.level == "at_or_below" and level <= strongest)
                or (rule.level == "below" and level < strongest)
            ):
                covered[fp] = rule.name or "inhibit rule"
    return covered


def _key(rule: InhibitRule, labels: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(name, "") for name in rule.equal)

"""Compound rules: several conditions on one station combined with all/any.

Each clause runs as an internal one-level threshold rule (``clause_rules``) through the
ordinary runners, so its window and aggregate behave exactly like a standalone rule's;
its transitions only flip the clause's truth here. The combination raises the rule's
level once it has held for ``for_ms`` (checked as the partition's event time advances)
and clears as soon as it stops holding. All metrics of a station share its partition, so
one processor sees every clause.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.ruleset import CompoundRule, ThresholdRule

__all__ = ["CompoundChange", "CompoundState", "clause_rule_id", "clause_rules"]

_SEP = "~"


def clause_rule_id(rule_id: str, k: int) -> str:
    return f"{rule_id}{_SEP}{k}"


def parse_clause(rule_id: str) -> tuple[str, int] | None:
    """(compound rule id, clause index) of an internal clause rule, else None."""
    head, sep, tail = rule_id.rpartition(_SEP)
    return (head, int(tail)) if sep and tail.isdigit() else None


def clause_rules(rule: CompoundRule) -> list[ThresholdRule]:
    """One internal rule per clause: the clause's threshold as its only level."""
    out = []
    for k, cond in enumerate(rule.conditions):
        thresholds = np.full((len(rule.stations), 4), np.nan)
        thresholds[:, 0] = cond.thresholds
        out.append(
            ThresholdRule(
                rule_id=clause_rule_id(rule.rule_id, k),
                metric=cond.metric,
                stations=rule.stations,
                thresholds=thresholds,
                direction=cond.direction,
                window_ms=cond.window_ms,
                aggregate=cond.aggregate,  # type: ignore[arg-type]
            )
        )
    return out


@dataclass(frozen=True)
class CompoundChange:
    station: str
    firing: bool
    at: int  # ms
    since: int  # ms: when the combination started to hold


@dataclass
class CompoundState:
    rule: CompoundRule
    held: dict[str, list[bool]] = field(default_factory=dict)  # station -> clause truths
    #: station -> when each clause last became true (ms; meaningful while it holds)
    rose: dict[str, list[int]] = field(default_factory=dict)
    since: dict[str, int] = field(default_factory=dict)  # holding, not yet fired
    firing: dict[str, int] = field(default_factory=dict)  # station -> since

    def _holds(self, station: str) -> bool:
        truths = self.held.get(station, [False] * len(self.rule.conditions))
        return all(truths) if self.rule.mode == "all" else any(truths)

    def clause(self, station: str, k: int, holds: bool, at: int) -> list[CompoundChange]:
        """A clause became true or false at ``at``; returns the change it causes now."""
        before = self._holds(station)
        n = len(self.rule.conditions)
        truths = self.held.setdefault(station, [False] * n)
        truths[k] = holds
        rose = self.rose.setdefault(station, [0] * n)
        if holds:
            rose[k] = at
        after = self._holds(station)
        if after and not before:
            # Since the clauses' own times, not the time of the change that came last:
            # a window-closing clause is decided later than an early-firing one.
            times = [t for t, h in zip(rose, truths, strict=True) if h]
            since = max(times) if self.rule.mode == "all" else min(times)
            self.since[station] = since
            return self.due(max(at, since), only=station)
        if before and not after:
            # Held for ``for_ms`` before it stopped: it fired then, whether or not the
            # partition's event time had come to that point between batches.
            out = self.due(at, only=station)
            self.since.pop(station, None)
            started = self.firing.pop(station, None)
            if started is not None:
                out.append(CompoundChange(station, False, at, started))
            return out
        return []

    def due(self, now: int, only: str | None = None) -> list[CompoundChange]:
        """Fire the combinations that have held for ``for_ms`` by event time ``now``."""
        out = []
        for station, since in list(self.since.items()):
            if only is not None and station != only:
                continue
            if now - since >= self.rule.for_ms:
                del self.since[station]
                self.firing[station] = since
                out.append(CompoundChange(station, True, since + self.rule.for_ms, since))
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"held": self.held, "rose": self.rose, "since": self.since, "firing": self.firing}

    def restore(self, saved: dict[str, Any]) -> None:
        n = len(self.rule.conditions)
        self.held = {s: list(v) for s, v in saved["held"].items() if len(v) == n}
        self.rose = {s: list(v) for s, v in saved.get("rose", {}).items() if len(v) == n}
        self.since = {s: int(v) for s, v in saved["since"].items()}
        self.firing = {s: int(v) for s, v in saved["firing"].items()}

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

from engine.contracts.ruleset import CompoundRule, ThresholdRule

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


#: Clause changes kept per station and clause: enough to merge clauses decided at
#: different delays (an early-firing level, a rain sum decided when its window closes).
HISTORY = 32


@dataclass
class CompoundState:
    """The combinations of one compound rule, per station, in event time.

    Clauses are decided at different delays (an early-firing level clause at once, a
    window-closing rain clause when its window closes), so their changes arrive out of
    time order with one another, though in order within each clause. Each station keeps
    its clauses' recent changes (``hist``) and the combination is worked out over their
    merged timeline whenever one comes in: an interval in which it held for ``for_ms``
    fires at its start + ``for_ms`` and clears at its end, also when the clause that
    reveals it is decided after the interval ended. A fired interval is never fired
    again, whatever a later change shows about its start.
    """

    rule: CompoundRule
    #: station -> per clause, its changes (ms, holds), in time order, the newest kept
    hist: dict[str, list[list[tuple[int, bool]]]] = field(default_factory=dict)
    #: station -> (start ms, firing?) of the combination's interval that fired last
    fired: dict[str, tuple[int, bool]] = field(default_factory=dict)
    #: station -> start (ms) of an interval holding now, not yet fired (``due``)
    since: dict[str, int] = field(default_factory=dict)

    @property
    def firing(self) -> dict[str, int]:
        """Stations whose combination is firing now, with when it started (ms)."""
        return {st: start for st, (start, on) in self.fired.items() if on}

    def clause(self, station: str, k: int, holds: bool, at: int) -> list[CompoundChange]:
        """Clause ``k`` became true or false at ``at``; returns the changes it reveals."""
        n = len(self.rule.conditions)
        hist = self.hist.setdefault(station, [[] for _ in range(n)])
        changes = hist[k]
        j = len(changes)
        while j and changes[j - 1][0] > at:
            j -= 1
        changes.insert(j, (at, holds))
        del changes[:-HISTORY]
        return self._evaluate(station, None)

    def due(self, now: int, only: str | None = None) -> list[CompoundChange]:
        """Fire the combinations that have held for ``for_ms`` by event time ``now``."""
        stations = [only] if only is not None else list(self.since)
        return [c for st in stations if st in self.since for c in self._evaluate(st, now)]

    def _intervals(self, station: str) -> list[tuple[int, int | None]]:
        """[start, end) of the combination over the clauses' merged timeline (ms; end
        None: it still holds)."""
        hist = self.hist.get(station, [])
        times = sorted({t for changes in hist for t, _ in changes})
        out: list[tuple[int, int | None]] = []
        start: int | None = None
        for t in times:
            truths = [_truth(changes, t) for changes in hist]
            holds = all(truths) if self.rule.mode == "all" else any(truths)
            if holds and start is None:
                start = t
            elif not holds and start is not None:
                out.append((start, t))
                start = None
        if start is not None:
            out.append((start, None))
        return out

    def _evaluate(self, station: str, now: int | None) -> list[CompoundChange]:
        """The fire and clear changes the timeline shows that were not sent yet; ``now``
        (ms) also fires an interval still holding once it has held for ``for_ms``."""
        out: list[CompoundChange] = []
        for_ms = self.rule.for_ms
        last_start, on = self.fired.get(station, (None, False))
        self.since.pop(station, None)
        for start, end in self._intervals(station):
            if last_start is not None and (end is not None and end <= last_start):
                continue  # before the interval that fired last: decided already
            was_fired = last_start is not None and start <= last_start
            if not was_fired:
                horizon = end if end is not None else now
                if horizon is None or horizon - start < for_ms:
                    if end is None:
                        self.since[station] = start  # holding: ``due`` fires it in time
                    continue
                out.append(CompoundChange(station, True, start + for_ms, start))
                last_start, on = start, True
            if on and end is not None and last_start is not None:
                out.append(CompoundChange(station, False, end, last_start))
                on = False
        if last_start is not None:
            self.fired[station] = (last_start, on)
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "hist": {s: [[list(c) for c in h] for h in hs] for s, hs in self.hist.items()},
            "fired": {s: list(v) for s, v in self.fired.items()},
            "since": self.since,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        n = len(self.rule.conditions)
        if "hist" not in saved:  # an older snapshot: the clauses' truths, no history
            self.hist = {
                s: [[(int(saved.get("rose", {}).get(s, [0] * n)[k]), True)] if h else []
                    for k, h in enumerate(truths)]
                for s, truths in saved["held"].items() if len(truths) == n
            }  # fmt: skip
            self.fired = {s: (int(v), True) for s, v in saved["firing"].items()}
            self.since = {s: int(v) for s, v in saved["since"].items()}
            return
        self.hist = {
            s: [[(int(t), bool(h)) for t, h in changes] for changes in hs]
            for s, hs in saved["hist"].items() if len(hs) == n
        }  # fmt: skip
        self.fired = {s: (int(v[0]), bool(v[1])) for s, v in saved["fired"].items()}
        self.since = {s: int(v) for s, v in saved["since"].items()}


def _truth(changes: list[tuple[int, bool]], t: int) -> bool:
    """A clause's truth at ``t`` (ms): its last change at or before it; false before any."""
    holds = False
    for at, h in changes:
        if at > t:
            break
        holds = h
    return holds

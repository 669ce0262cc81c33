"""Corroboration across stations: k gauges of a group (basin, district) at a level.

A ``CorroborationRule`` watches the alert events of its source rule. A station counts
from the event that takes it to ``min_level`` or above until one that takes it below
(a station already above when the rule is loaded counts from its next crossing);
the rule holds for a group while at least ``k`` counting stations reached the level
within ``within_ms`` of each other. It then raises ``level`` for the whole group (the
alert's station is the group's name), dated at the entry of the k-th station, and
clears when fewer than k remain. Every time is event time, so a replay gives the same alerts.

A group's state depends on the order of its stations' events (an entry counts only
with the stations that have not left by then), so it takes them in event time, in the
order ``event_order`` gives: ``Corroborator.run`` sorts them (``vigil replay``); the
live stage holds them until every partition's watermark has passed them
(``engine.evaluation.corroboration_buffer``, which states what it costs and the bound on what it
cannot order), so that a lagging partition or a failover replay changes nothing.

The stations of a group live in different partitions, so this runs after the alerts
topic, on a stream re-keyed by group (``engine.runtime.corroboration``, which keeps each
station's entry in a changelog-backed table).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engine.contracts.alerts import AlertEvent, Level, fingerprint
from engine.contracts.ruleset import CorroborationRule
from engine.evaluation.events import format_text

__all__ = ["Corroborator", "GroupState", "corroboration_event", "event_order", "groups_of"]


def groups_of(rules: tuple[CorroborationRule, ...], event: AlertEvent) -> list[tuple[str, str]]:
    """(rule id, group) pairs that a source-rule event feeds: those it can change.

    An event that takes its station to ``min_level`` or above from below enters it; one
    that takes it down to below ``min_level`` may take it out (also when it started
    below: a reload may have raised ``min_level`` since the station entered). The
    others (none to blue under a yellow rule, orange to red) cannot change a group's
    state, and on Kafka each pair costs a record on the corroboration topic; in a flood
    most transitions are of that kind.
    """
    if not rules:
        return []
    level, previous = Level.parse(event.level), Level.parse(event.previous_level)
    return [
        (r.rule_id, group)
        for r in rules
        if r.source_rule == event.rule_id
        and (previous < r.min_level <= level or (level < r.min_level and level < previous))
        for group in r.groups_of_station.get(event.station, ())
    ]


def event_order(event: AlertEvent) -> tuple[int, str]:
    """The order in which a group takes its stations' events: event time, then station
    (a station has one event per time in a source rule's series), so that entries and
    leaves at the same millisecond are taken the same way live and in a replay."""
    return (event.at, event.station)


@dataclass(frozen=True)
class GroupChange:
    firing: bool
    at: int  # ms
    since: int  # ms: entry of the k-th station
    count: int  # stations counting after the change


class GroupState:
    """Stations of one group at or above the level, with their entry times (ms), and
    the time of the latest event taken from each station (``last``).

    The entry times are also kept sorted, so that an event costs one insertion or
    removal and a scan that usually stops at the first cluster, not a sort of the
    whole group (thousands of gauges in a large basin during a flood).
    """

    def __init__(
        self,
        entered: Mapping[str, int] | None = None,
        firing_since: int | None = None,
        last: Mapping[str, int] | None = None,
    ) -> None:
        self.entered: dict[str, int] = dict(entered or {})
        self.firing_since = firing_since
        self.last: dict[str, int] = dict(last or {})
        self._times = sorted(self.entered.values())

    def _enter(self, station: str, at: int) -> None:
        if station not in self.entered:
            self.entered[station] = at
            insort(self._times, at)

    def _leave(self, station: str) -> None:
        at = self.entered.pop(station, None)
        if at is not None:
            del self._times[bisect_left(self._times, at)]

    def _holding(self, rule: CorroborationRule) -> int | None:
        """The entry time of the k-th station of a cluster within ``within_ms``, or None."""
        times, k = self._times, rule.k
        for j in range(k - 1, len(times)):
            if times[j] - times[j - k + 1] <= rule.within_ms:
                return times[j]
        return None

    def apply(self, rule: CorroborationRule, event: AlertEvent) -> GroupChange | None:
        """Take a source-rule event; returns the group's change, if any."""
        return self.take(rule, event.station, event.at, Level.parse(event.level))

    def take(
        self, rule: CorroborationRule, station: str, at: int, level: Level
    ) -> GroupChange | None:
        """Take a station's transition to ``level`` at ``at`` (ms, event time).

        A station's events are taken in their order, so an event no later than the
        station's latest is one taken before, sent again by a worker that replays a
        partition after a failover: taken again, its entry would count a station that
        has left since.
        """
        last = self.last.get(station)
        if last is not None and at <= last:
            return None
        self.last[station] = at
        if level >= rule.min_level:
            self._enter(station, at)
        else:
            self._leave(station)
        since = self._holding(rule)
        if since is not None and self.firing_since is None:
            self.firing_since = since
            return GroupChange(True, max(since, at), since, len(self.entered))
        if since is None and self.firing_since is not None:
            started, self.firing_since = self.firing_since, None
            return GroupChange(False, at, started, len(self.entered))
        return None


def corroboration_event(
    rule: CorroborationRule, group: str, metric: str, change: GroupChange
) -> AlertEvent:
    """The group's alert: station = group name, labels name the group."""
    level, previous = (rule.level, Level.NONE) if change.firing else (Level.NONE, rule.level)
    labels = {**rule.labels, "group": group, "basin": group, "district": group,
              "stations": str(change.count)}  # fmt: skip
    template = rule.summary if change.firing else rule.resolved_summary
    return AlertEvent(
        fingerprint=fingerprint(rule.rule_id, group, metric),
        rule_id=rule.rule_id,
        station=group,
        metric=metric,
        level=level.label,
        previous_level=previous.label,
        state="firing" if change.firing else "resolved",
        started_at=change.since,
        at=change.at,
        value=float(change.count),
        threshold=float(rule.k),
        summary=format_text(template, rule.lang, group, metric, labels, level, previous,
                            float(change.count), float(rule.k)),
        labels=labels,
    )  # fmt: skip


class Corroborator:
    """All corroboration rules over a stream of alert events (``vigil replay`` and
    tests; the topology runs ``engine.runtime.corroboration``). ``feed`` takes the events
    in the order given; ``run`` in event time (``event_order``), as the live stage does."""

    def __init__(self, rules: tuple[CorroborationRule, ...]) -> None:
        self.rules = {r.rule_id: r for r in rules}
        self.groups: dict[tuple[str, str], GroupState] = {}

    def feed(self, event: AlertEvent) -> list[AlertEvent]:
        out = []
        for rule_id, group in groups_of(tuple(self.rules.values()), event):
            rule = self.rules[rule_id]
            state = self.groups.setdefault((rule_id, group), GroupState())
            change = state.apply(rule, event)
            if change is not None:
                out.append(corroboration_event(rule, group, event.metric, change))
        return out

    def run(self, events: Iterable[AlertEvent]) -> list[AlertEvent]:
        """The group alerts of ``events``, taken in event time whatever their order."""
        return [g for e in sorted(events, key=event_order) for g in self.feed(e)]

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
cannot order), so that a lagging partition or a failover replay changes nothing. An
event that comes after all that (a gauge's store-and-forward backlog) is put in its
place from the group's history of transitions (``GroupState.take_all``): the basin
alerts are then the replay's, except that one sent before it cannot be taken back.

The stations of a group live in different partitions, so this runs after the alerts
topic, on a stream re-keyed by group (``engine.runtime.corroboration``, which keeps each
station's entry in a changelog-backed table).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from engine.contracts.alerts import AlertEvent, Level, fingerprint
from engine.contracts.ruleset import CorroborationRule
from engine.evaluation.events import format_text

__all__ = [
    "Corroborator",
    "GroupChange",
    "GroupState",
    "HistoryKey",
    "Outcome",
    "Taken",
    "Told",
    "corroboration_event",
    "event_order",
    "groups_of",
]


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

    @property
    def key(self) -> tuple[bool, int, int]:
        """What identifies the group's alert event (its level, ``at``, ``started_at``)."""
        return (self.firing, self.at, self.since)


#: A history entry's key: (at ms, station), the order of ``event_order``.
HistoryKey = tuple[int, str]
#: The group's newest change sent: (firing, at ms, since ms).
Told = tuple[bool, int, int]


@dataclass(frozen=True)
class Taken:
    """A transition the group took (an entry of its history) and what undoes it: the
    station's entry time and latest event time and the group's ``firing_since`` before
    it (ms, None: none), and the change it raised."""

    level: Level
    entered: int | None
    last: int | None
    firing_since: int | None
    change: GroupChange | None


@dataclass
class Outcome:
    """What ``GroupState.take_all`` did: the changes to send, and what the caller keeps
    in step (``stations``: the touched stations' (entry, latest) before; ``history``:
    the entries that changed, None where removed)."""

    raised: list[GroupChange] = field(default_factory=list)
    #: Sent before, not raised by the recomputation: they cannot be taken back.
    withdrawn: list[GroupChange] = field(default_factory=list)
    revised: int = 0  # late events put in their place in event time
    too_old: int = 0  # late events older than the history: taken in arrival order
    stations: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    history: dict[HistoryKey, Taken | None] = field(default_factory=dict)


class GroupState:
    """Stations of one group at or above the level, with their entry times (ms), and
    the time of the latest event taken from each station (``last``).

    The entry times are also kept sorted, so that an event costs one insertion or
    removal and a scan that usually stops at the first cluster, not a sort of the
    whole group (thousands of gauges in a large basin during a flood).

    With ``history_ms`` (the live stage), the group also keeps the transitions it took
    over the last ``history_ms`` of event time (``history``, one ``Taken`` each), so that
    ``take_all`` can put a late event (a gauge's store-and-forward backlog) in its
    place: it undoes the transitions after it, takes it, takes them again, and returns
    the group changes that this raises and that were not sent, those of a past episode
    included. What was sent and the recomputation no longer raises cannot be taken back
    (``Outcome.withdrawn``). A late event older than the history is taken in arrival
    order (``Outcome.too_old``). Without ``history_ms`` (``vigil replay``, which takes
    everything in event time) nothing is kept.
    """

    def __init__(
        self,
        entered: Mapping[str, int] | None = None,
        firing_since: int | None = None,
        last: Mapping[str, int] | None = None,
        history: Mapping[HistoryKey, Taken] | None = None,
        history_ms: int | None = None,
        told: Told | None = None,
    ) -> None:
        self.entered: dict[str, int] = dict(entered or {})
        self.firing_since = firing_since
        self.last: dict[str, int] = dict(last or {})
        self._times = sorted(self.entered.values())
        self.history_ms = history_ms
        #: The newest change sent (``take_all``), as a dispatcher holds it.
        self.told = told
        self.history: dict[HistoryKey, Taken] = dict(history or {})
        self._order = sorted(self.history)
        #: The latest (at, station) taken: an event before it is late.
        self.newest: HistoryKey | None = max(((a, s) for s, a in self.last.items()), default=None)

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
        """Take a station's transition to ``level`` at ``at`` (ms, event time), in the
        order given (``take_all`` puts a late one in its place).

        A station's events are taken in their order, so an event no later than the
        station's latest is one taken before, sent again by a worker that replays a
        partition after a failover: taken again, its entry would count a station that
        has left since.
        """
        last = self.last.get(station)
        if last is not None and at <= last:
            return None
        undo = (self.entered.get(station), last, self.firing_since)
        self.last[station] = at
        if level >= rule.min_level:
            self._enter(station, at)
        else:
            self._leave(station)
        since = self._holding(rule)
        change = None
        if since is not None and self.firing_since is None:
            self.firing_since = since
            change = GroupChange(True, max(since, at), since, len(self.entered))
        elif since is None and self.firing_since is not None:
            started, self.firing_since = self.firing_since, None
            change = GroupChange(False, at, started, len(self.entered))
        key = (at, station)
        if self.newest is None or key > self.newest:
            self.newest = key
            if self.history_ms is not None:
                self.history[key] = Taken(level, *undo, change)
                self._order.append(key)
        return change

    def take_all(
        self, rule: CorroborationRule, events: Iterable[tuple[str, int, Level]]
    ) -> Outcome:
        """Take a group's events, (station, at ms, level) each, in event time wherever
        they fall (the class doc); events taken before are dropped (``take``)."""
        fresh: dict[HistoryKey, Level] = {}
        for station, at, level in events:
            last = self.last.get(station)
            if last is None or at > last:
                fresh[at, station] = level
        out = Outcome()
        newest, floor = self.newest, self._floor()
        late = sorted(k for k in fresh if newest is not None and k < newest)
        old = [k for k in late if floor is None or k[0] < floor]
        out.revised, out.too_old = len(late) - len(old), len(old)
        start = next((k for k in late if floor is not None and k[0] >= floor), None)
        redo = len(self._order) - bisect_left(self._order, start) if start is not None else 0
        tail = self._order[-redo:] if redo else []
        for station in {s for _, s in fresh} | {s for _, s in tail}:
            out.stations[station] = (self.entered.get(station), self.last.get(station))
        undone = self._undo(redo)
        sent = {t.change.key for t in undone.values() if t.change is not None}
        merged = {k: t.level for k, t in undone.items()} | {
            k: v for k, v in fresh.items() if k not in old
        }
        changes = [c for k in sorted(merged) if (c := self.take(rule, k[1], k[0], merged[k]))]
        out.raised = [c for c in changes if c.key not in sent]
        raised = {c.key for c in changes}
        out.withdrawn = [
            t.change for t in undone.values() if t.change is not None and t.change.key not in raised
        ]
        for key in merged.keys() | undone.keys():
            if self.history.get(key) != undone.get(key):
                out.history[key] = self.history.get(key)
        # Older than the history: in arrival order, after the rest (the transitions kept
        # could not be undone past it). The history's records of what each transition
        # undoes no longer describe this state, so it is dropped: a later late event is
        # taken in arrival order too, rather than recomputed from records that would
        # raise again what was sent.
        out.raised += [c for k in old if (c := self.take(rule, k[1], k[0], fresh[k]))]
        if old:
            out.history.update(dict.fromkeys(self._order))
            self.history.clear()
            self._order.clear()
        for change in out.raised:
            self._tell(change)
        restated = self._restate()
        if restated is not None:
            out.raised.append(restated)
            self._tell(restated)
        out.history.update(dict.fromkeys(self._prune()))
        return out

    def _tell(self, change: GroupChange) -> None:
        """Note a change sent: a dispatcher keeps the newest by ``at`` (the later one of
        equal ``at``) and takes an older one as stale."""
        if self.told is None or change.at >= self.told[1]:
            self.told = (change.firing, change.at, change.since)

    def _restate(self) -> GroupChange | None:
        """The change that brings the sinks to the group's state when what they were
        told last says otherwise: a late event withdrew the newest change sent (an
        all-clear of a basin that, with the late gauge counted, still fires), or the
        recomputation says it only with changes older than one already sent (stale to
        a dispatcher). Stamped at the group's newest event time; None when the sinks
        are where the group is."""
        firing = self.firing_since is not None
        if self.told is None or self.told[0] == firing:
            return None
        at = max(self.told[1], self.newest[0] if self.newest is not None else 0)
        since = self.firing_since if self.firing_since is not None else self.told[2]
        return GroupChange(firing, at, since, len(self.entered))

    def _floor(self) -> int | None:
        """The oldest event time (ms) the history still covers; None: no history."""
        if self.history_ms is None or self.newest is None:
            return None
        return self.newest[0] - self.history_ms

    def _undo(self, n: int) -> dict[HistoryKey, Taken]:
        """Undo the last ``n`` transitions of the history, newest first; returns them."""
        if not n:
            return {}
        undone: dict[HistoryKey, Taken] = {}
        for key in reversed(self._order[-n:]):
            taken = undone[key] = self.history.pop(key)
            station = key[1]
            self._leave(station)
            if taken.entered is not None:
                self._enter(station, taken.entered)
            if taken.last is None:
                del self.last[station]
            else:
                self.last[station] = taken.last
            self.firing_since = taken.firing_since
        del self._order[-n:]
        # What the history does not hold (all of it, with no history yet) is older.
        self.newest = self._order[-1] if self._order else None
        if self.newest is None:
            self.newest = max(((a, s) for s, a in self.last.items()), default=None)
        return undone

    def _prune(self) -> list[HistoryKey]:
        """Drop the history older than ``history_ms`` before the newest; returns it."""
        floor = self._floor()
        if floor is None:
            return []
        cut = bisect_left(self._order, (floor, ""))
        dropped, self._order = self._order[:cut], self._order[cut:]
        for key in dropped:
            del self.history[key]
        return dropped


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

"""Aggregation groups: many alerts, one message per receiver (Alertmanager's timing).

Contract:

- A group is one route and one value of its ``group_by`` labels (``basin=qiantang``).
  Membership is sticky for an episode: a receiver told that an alert fired hears of its
  every change and its all-clear, even once the level moved to other routes.
- Timing, per group: its first message waits ``group_wait`` after the group's first
  alert (to gather its companions); after that the group is looked at every
  ``group_interval`` and a receiver gets a message when it has news (an alert it was not
  told of, a level change, an all-clear when ``send_resolved``), or, with no news, when
  ``repeat_interval`` has passed since its last message and some alert is still
  unacknowledged. A level above any the group has shown is not held for
  ``group_interval``: the group is looked at ``group_wait`` after it.
- Hidden alerts (silenced, inhibited) are kept, counted in the note, and not sent.
- A receiver with news is *pending* until the dispatcher sends to it (a rate limit may
  hold it); what it gets then is the group's state at that time, so nothing is lost and
  repeated changes of a held group make one message.
- Keys: ``<receiver>:<group id>:<n>``, ``n`` counting the messages of this group to
  this receiver; the group id hashes the route, the group labels and the event that
  opened the group. Same events and clock, same keys, restored or not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.contracts.alerts import Level
from engine.contracts.notification import Notification
from engine.dispatch.config import Route
from engine.dispatch.lifecycle import AlertState

__all__ = ["Group", "Groups", "Progress", "latched_levels", "told_key"]


def told_key(state: AlertState) -> str:
    """What a receiver was told of an alert: its transition and whether it was active
    (a latched alert and its acknowledged all-clear share one transition)."""
    return f"{state.event.key}|{'active' if state.active else 'clear'}"


@dataclass
class Progress:
    """What one receiver of a group has been told, and whether it has news waiting."""

    told: dict[str, str] = field(default_factory=dict)  # fingerprint -> told_key
    last_sent: int | None = None
    pending: bool = False
    repeat: bool = False  # pending only because the repeat interval has passed


@dataclass
class Group:
    id: str
    route_id: str
    labels: dict[str, str]
    created_at: int
    next_at: int  # when the group is next looked at (ms)
    members: dict[str, None] = field(default_factory=dict)  # fingerprints, in join order
    progress: dict[str, Progress] = field(default_factory=dict)  # route receiver -> progress
    seq: dict[str, int] = field(default_factory=dict)  # receiver -> messages sent
    shown: int = 0  # highest Level looked at so far

    def next_key(self, receiver: str) -> str:
        self.seq[receiver] = self.seq.get(receiver, 0) + 1
        return f"{receiver}:{self.id}:{self.seq[receiver]}"

    def to_dict(self) -> dict[str, Any]:
        # Not asdict, which deep-copies field by field: this runs at every store, and
        # ``told`` holds an entry per member and receiver.
        return {
            "id": self.id,
            "route_id": self.route_id,
            "labels": dict(self.labels),
            "created_at": self.created_at,
            "next_at": self.next_at,
            "members": list(self.members),
            "progress": {
                name: {
                    "told": dict(p.told),
                    "last_sent": p.last_sent,
                    "pending": p.pending,
                    "repeat": p.repeat,
                }
                for name, p in self.progress.items()
            },
            "seq": dict(self.seq),
            "shown": self.shown,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Group:
        return cls(
            **{
                **data,
                "members": dict.fromkeys(data["members"]),
                "progress": {k: Progress(**p) for k, p in data["progress"].items()},
            }
        )


class Groups:
    """Every open group, in the order they were opened."""

    def __init__(self) -> None:
        self._groups: dict[str, Group] = {}
        self._index: dict[tuple[str, tuple[str, ...]], str] = {}

    def __iter__(self) -> Iterator[Group]:
        return iter(list(self._groups.values()))

    def get(self, group_id: str) -> Group | None:
        return self._groups.get(group_id)

    def join(self, route: Route, labels: Mapping[str, str], state: AlertState, now: int) -> Group:
        """Put the alert in its group on ``route`` (opening the group if needed)."""
        values = tuple(labels.get(name, "") for name in route.group_by)
        group_id = self._index.get((route.id, values))
        group = self._groups.get(group_id) if group_id else None
        if group is None:
            digest = hashlib.blake2b(
                "\x1f".join((route.id, *values, state.event.key)).encode(), digest_size=8
            )
            group = Group(
                id=digest.hexdigest(),
                route_id=route.id,
                labels=dict(zip(route.group_by, values, strict=True)),
                created_at=now,
                next_at=now + route.group_wait_ms,
                progress={name: Progress() for name in route.receivers},
            )
            self._groups[group.id] = group
            self._index[(route.id, values)] = group.id
        group.members[state.fingerprint] = None
        self.raised(group, route, state.level, now)
        return group

    def raised(self, group: Group, route: Route, level: int, now: int) -> None:
        """A member is now at ``level``: a level the group has not shown yet is looked
        at ``group_wait`` from now rather than at the next interval."""
        if level > group.shown and group.seq:
            group.next_at = min(group.next_at, now + route.group_wait_ms)

    def due(self, now: int, routes: Mapping[str, Route]) -> list[Group]:
        """The groups to look at now; each one's next look is scheduled."""
        out = []
        for group in self._groups.values():
            if group.next_at <= now:
                interval = routes[group.route_id].group_interval_ms
                group.next_at += interval
                if group.next_at <= now:  # the clock jumped (a pause): no catch-up burst
                    group.next_at = now + interval
                out.append(group)
        return out

    def evaluate(
        self, group: Group, route: Route, states: Mapping[str, AlertState],
        hidden: Callable[[str], str | None], repeat_ms: Callable[[int], int], now: int,
    ) -> None:  # fmt: skip
        """Mark the receivers that have news (or a repeat due) as pending."""
        firing, _ = _content(group, None, states, hidden, route.send_resolved)
        group.shown = max([group.shown, *(s.level for s in firing)])
        for progress in group.progress.values():
            firing, resolved = _content(group, progress, states, hidden, route.send_resolved)
            news = resolved or any(progress.told.get(s.fingerprint) != told_key(s) for s in firing)
            if news:
                progress.pending, progress.repeat = True, False
                continue
            if not route.send_resolved:  # all-clears are not told: forget them
                progress.told = {fp: k for fp, k in progress.told.items() if states[fp].active}
            every = route.repeat_ms if route.repeat_ms is not None else repeat_ms(_top(firing))
            unacked = any(s.status == "firing" for s in firing)
            last = progress.last_sent
            if unacked and every and last is not None and now >= last + every:
                progress.pending = progress.repeat = True

    def compose(
        self, group: Group, receiver: str, route: Route, states: Mapping[str, AlertState],
        hidden: Callable[[str], str | None], links: Callable[[str], str | None], now: int,
    ) -> tuple[int, Callable[[str], Notification]] | None:  # fmt: skip
        """What a pending receiver would get now: ``(level, make(extra_note))``; None
        when it no longer has anything to say (its news was silenced meanwhile)."""
        progress = group.progress[receiver]
        firing, resolved = _content(group, progress, states, hidden, route.send_resolved)
        news = resolved or any(progress.told.get(s.fingerprint) != told_key(s) for s in firing)
        if not news and not (progress.repeat and firing):
            progress.pending = progress.repeat = False
            return None
        level = _top(firing)
        notes = _notes(group, firing, states, hidden, repeat=not news)
        alerts = sorted(firing + resolved, key=_order)

        def make(extra: str) -> Notification:
            told = {fp: key for fp, key in progress.told.items() if states[fp].active}
            told.update({s.fingerprint: told_key(s) for s in firing})
            progress.told, progress.last_sent = told, now
            progress.pending = progress.repeat = False
            urls = {s.fingerprint: links(s.fingerprint) for s in firing}
            return Notification(
                key=group.next_key(receiver),
                receiver=receiver,
                status="firing" if firing else "resolved",
                level=Level(level).label,
                group_labels=dict(group.labels),
                alerts=tuple(s.event for s in alerts),
                links={fp: url for fp, url in urls.items() if url},
                created_at=now,
                note="; ".join(n for n in (*notes, extra) if n),
                latched=latched_levels(firing),
            )

        return level, make

    def sweep(self, group: Group, states: Mapping[str, AlertState]) -> list[str]:
        """Drop members no receiver needs any more (all-clear told, or never told of);
        close the group once empty and quiet. Returns the fingerprints dropped."""
        told = set().union(*(p.told for p in group.progress.values()))
        gone = [fp for fp in group.members if not states[fp].active and fp not in told]
        for fp in gone:
            del group.members[fp]
        pending = any(p.pending for p in group.progress.values())
        if not group.members and not pending:
            del self._groups[group.id]
            self._index = {k: v for k, v in self._index.items() if v != group.id}
        return gone

    def to_dict(self) -> list[dict[str, Any]]:
        return [g.to_dict() for g in self._groups.values()]

    def restore(self, data: list[Mapping[str, Any]], routes: Mapping[str, Route]) -> None:
        """Groups from ``to_dict``; those of routes the config no longer has are dropped."""
        self._groups, self._index = {}, {}
        for raw in data:
            group = Group.from_dict(raw)
            route = routes.get(group.route_id)
            if route is None:
                continue
            self._groups[group.id] = group
            values = tuple(group.labels[name] for name in route.group_by)
            self._index[(group.route_id, values)] = group.id


def _content(
    group: Group, progress: Progress | None, states: Mapping[str, AlertState],
    hidden: Callable[[str], str | None], send_resolved: bool,
) -> tuple[list[AlertState], list[AlertState]]:  # fmt: skip
    """The visible active alerts, and the all-clears ``progress`` has yet to be told."""
    firing, resolved = [], []
    for fp in group.members:
        state = states[fp]
        if state.active:
            if hidden(fp) is None:
                firing.append(state)
        elif send_resolved and progress is not None:
            told = progress.told.get(fp)
            if told is not None and told != told_key(state):
                resolved.append(state)
    return firing, resolved


def latched_levels(states: Iterable[AlertState]) -> dict[str, str]:
    """Fingerprint -> level label of the latched ones among ``states`` (the level they
    are held at: the episode's peak)."""
    return {s.fingerprint: Level(s.level).label for s in states if s.latched}


def _order(state: AlertState) -> tuple[int, str, str]:
    return (-state.level, state.event.station, state.event.rule_id)


def _top(firing: list[AlertState]) -> int:
    return max((s.level for s in firing), default=int(Level.NONE))


def _notes(
    group: Group, firing: list[AlertState], states: Mapping[str, AlertState],
    hidden: Callable[[str], str | None], repeat: bool,
) -> list[str]:  # fmt: skip
    notes = ["repeat: no change since the last message"] if repeat else []
    acked = sum(1 for s in firing if s.status == "acknowledged")
    if acked:
        notes.append(f"{acked} of {len(firing)} acknowledged")
    notes += [
        f"{s.event.station} latched: data cleared, stays until acknowledged"
        for s in firing
        if s.latched
    ]
    reasons: dict[str, int] = {}
    for fp in group.members:
        why = hidden(fp) if states[fp].active else None
        if why is not None:
            reasons[why] = reasons.get(why, 0) + 1
    notes += [f"{n} {why}" for why, n in sorted(reasons.items())]
    return notes

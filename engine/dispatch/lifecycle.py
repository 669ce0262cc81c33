"""The life of each alert series (fingerprint): firing -> acknowledged -> resolved ->
closed, and its escalation timers.

Contract:

- ``apply(event, now)`` takes the series' newest transition; an event older than the
  newest one seen, or the same one again, changes nothing (returns None): the alerts
  topic delivers at least once.
- Status: ``firing`` while the data fires and nobody acknowledged; ``acknowledged``
  (by, at, note) once a person did; ``resolved`` when the data clears (the all-clear);
  ``closed`` when a person closes a resolved alert with feedback. An acknowledgement
  covers the level it was given at: a rise above it makes the alert firing again, so
  a red never hides behind the yellow someone took an hour ago.
- Latch: when the episode reached a level whose policy latches (red by default) and
  nobody acknowledged it, an all-clear leaves the alert firing, ``latched``, until a
  person acknowledges it; it then resolves.
- Escalation: for each route the alert takes, the time it reached the route and the
  steps taken. ``escalations_due`` gives the steps whose ``after`` has passed for alerts
  still unacknowledged and notifiable; while an alert is hidden (silenced, inhibited)
  its clock stands still. An acknowledgement stops them.
- A new episode (a firing event after resolved or closed) starts afresh: no
  acknowledgement, escalation clocks from now; it stays in the groups the last one was
  still in (their receivers have not been told the all-clear yet).
- Forgetting: ``forget(before)`` drops the alerts that are over (resolved or closed),
  in no group any more (every receiver told) and unchanged since before ``before``
  (wall ms), and returns them (the gateway keeps them as history). So the state holds
  what is going on plus a retention window, not every episode since the first.
  A forgotten series starts afresh on its next firing event; an all-clear of it is
  ignored, as of any series not firing.
- ``to_dict``/``from_dict`` round-trip the whole state through JSON types; ``touched``
  and ``removed`` name the alerts changed and forgotten since ``take_changes`` last
  emptied them, so a store can write only those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from engine.contracts.alerts import AlertEvent, Level
from engine.dispatch.config import Route

__all__ = ["Ack", "AlertState", "Closure", "Lifecycle", "LifecycleError", "Membership"]

Status = Literal["firing", "acknowledged", "resolved", "closed"]


class LifecycleError(ValueError):
    """An action that does not fit the alert's state; the message says why."""


@dataclass(frozen=True)
class Ack:
    by: str
    at: int  # ms, dispatcher clock
    note: str
    level: int  # the level (Level value) it covers


@dataclass(frozen=True)
class Closure:
    by: str
    at: int
    feedback: str


@dataclass
class Membership:
    """The alert's group on one route and its escalation clock there: ``since`` is when
    the clock started (ms), moved on by the time the alert spent hidden; ``step`` how
    many steps were taken."""

    group: str
    since: int
    step: int = 0
    step_sent: list[str] = field(default_factory=list)  # receivers of ``step`` told
    checked: int | None = None  # when ``escalations_due`` last looked (ms)


@dataclass
class AlertState:
    event: AlertEvent  # newest transition
    peak: int  # highest Level of the episode
    received_at: int  # when the episode reached the dispatcher (ms)
    ack: Ack | None = None
    latched: bool = False
    closed: Closure | None = None
    routes: dict[str, Membership] = field(default_factory=dict)  # route id -> membership
    changed_at: int = 0  # when a transition or a person last changed it (ms, wall clock)

    @property
    def fingerprint(self) -> str:
        return self.event.fingerprint

    @property
    def status(self) -> Status:
        if self.closed is not None:
            return "closed"
        if self.event.state == "resolved" and not self.latched:
            return "resolved"
        return "acknowledged" if self.ack is not None else "firing"

    @property
    def active(self) -> bool:
        """Firing for people: the data fires, or it cleared and the alert is latched."""
        return self.status in ("firing", "acknowledged")

    @property
    def level(self) -> int:
        """The Level people should see: the peak while latched, else the data's."""
        return self.peak if self.latched else int(Level.parse(self.event.level))

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event.to_dict(),
            "peak": self.peak,
            "received_at": self.received_at,
            "ack": None if self.ack is None else asdict(self.ack),
            "latched": self.latched,
            "closed": None if self.closed is None else asdict(self.closed),
            "routes": {k: asdict(m) for k, m in self.routes.items()},
            "changed_at": self.changed_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertState:
        return cls(
            event=AlertEvent.from_dict(dict(data["event"])),
            peak=data["peak"],
            received_at=data["received_at"],
            ack=None if data["ack"] is None else Ack(**data["ack"]),
            latched=data["latched"],
            closed=None if data["closed"] is None else Closure(**data["closed"]),
            routes={k: Membership(**m) for k, m in data["routes"].items()},
            changed_at=data.get("changed_at", data["received_at"]),
        )


class Lifecycle:
    """Every alert series the dispatcher knows. ``latches(level)`` says whether an
    episode that reached ``level`` latches (the level policies of the config)."""

    def __init__(self, latches: Callable[[int], bool]) -> None:
        self._latches = latches
        self._alerts: dict[str, AlertState] = {}
        #: fingerprints changed / forgotten since the last ``take_changes``
        self.touched: set[str] = set()
        self.removed: set[str] = set()

    def take_changes(self) -> tuple[set[str], set[str]]:
        """``(touched, removed)`` since the last call, and start afresh."""
        out = (self.touched, self.removed)
        self.touched, self.removed = set(), set()
        return out

    def __iter__(self) -> Iterator[AlertState]:
        return iter(self._alerts.values())

    @property
    def states(self) -> Mapping[str, AlertState]:
        """Every alert by fingerprint (read only)."""
        return self._alerts

    def get(self, fingerprint: str) -> AlertState | None:
        return self._alerts.get(fingerprint)

    def apply(self, event: AlertEvent, now: int) -> AlertState | None:
        """Take a transition; None when it is stale or a repeat of one taken."""
        rank = int(Level.parse(event.level))
        state = self._alerts.get(event.fingerprint)
        if state is not None and (event.at < state.event.at or event.key == state.event.key):
            return None
        self.touched.add(event.fingerprint)
        if state is None or not state.active:
            if event.state == "resolved":
                return None  # an all-clear of nothing firing: nothing to tell anyone
            fresh = AlertState(event, rank, now, changed_at=now)
            if state is not None:  # still in groups that have not told the all-clear yet
                fresh.routes = {k: Membership(m.group, now) for k, m in state.routes.items()}
            self._alerts[event.fingerprint] = fresh
            return fresh
        state.event, state.changed_at = event, now
        if event.state == "firing":
            state.latched = False
            if state.ack is not None and rank > state.ack.level:
                state.ack = None  # worse than what was taken: people must hear it again
                for membership in state.routes.values():
                    membership.since, membership.step, membership.step_sent = now, 0, []
                    membership.checked = None
            state.peak = max(state.peak, rank)
        elif state.ack is None and self._latches(state.peak):
            state.latched = True
        return state

    def acknowledge(self, fingerprint: str, by: str, note: str, now: int) -> AlertState:
        """A person takes the alert. Acknowledging again keeps the first; a latched
        alert whose data cleared resolves."""
        state = self._known(fingerprint)
        self.touched.add(fingerprint)
        if state.status in ("resolved", "closed"):
            raise LifecycleError(
                f"alert {fingerprint} is {state.status}: there is nothing to acknowledge"
            )
        if state.ack is None:
            state.ack = Ack(by, now, note, state.level)
            state.changed_at = now
        state.latched = False
        return state

    def close(self, fingerprint: str, by: str, feedback: str, now: int) -> AlertState:
        """A person closes a resolved alert with feedback (closing again keeps the first)."""
        state = self._known(fingerprint)
        self.touched.add(fingerprint)
        if state.active:
            raise LifecycleError(
                f"alert {fingerprint} is still {state.status}: it can be closed once its "
                "data clears (acknowledge it to stop repeats and escalation)"
            )
        if state.closed is None:
            state.closed = Closure(by, now, feedback)
            state.changed_at = now
        return state

    def join(self, state: AlertState, route_id: str, group: str, now: int) -> bool:
        """Record that the alert takes ``route_id`` in ``group``; False if it already did."""
        if route_id in state.routes:
            return False
        state.routes[route_id] = Membership(group, now)
        self.touched.add(state.fingerprint)
        return True

    def escalations_due(
        self, now: int, routes: Mapping[str, Route], hidden: Callable[[str], object]
    ) -> list[tuple[AlertState, str, int]]:
        """``(alert, route id, step index)`` for each escalation step due at ``now``,
        one step per alert and route at a time. ``hidden(fp)`` is truthy for an alert
        that is silenced or inhibited: its clock stands still (call this every tick)."""
        due = []
        for state in self._alerts.values():
            if state.status != "firing":
                continue
            for route_id, membership in state.routes.items():
                route = routes.get(route_id)
                if route is None or membership.step >= len(route.escalation):
                    continue
                checked, membership.checked = membership.checked, now
                self.touched.add(state.fingerprint)
                if hidden(state.fingerprint):
                    # the clock stands still: what passed since the last look does not count
                    membership.since += now - (membership.since if checked is None else checked)
                    continue
                if now >= membership.since + route.escalation[membership.step].after_ms:
                    due.append((state, route_id, membership.step))
        return due

    def escalated(self, state: AlertState, route_id: str, receiver: str, receivers: int) -> None:
        """``receiver`` was told of the alert's current step on ``route_id``; once all
        ``receivers`` of the step were, the next step's clock runs."""
        membership = state.routes[route_id]
        self.touched.add(state.fingerprint)
        membership.step_sent.append(receiver)
        if len(membership.step_sent) >= receivers:
            membership.step, membership.step_sent = membership.step + 1, []

    def leave(self, state: AlertState, route_id: str) -> None:
        """The alert is out of its group on ``route_id`` (told resolved, or dropped)."""
        state.routes.pop(route_id, None)
        self.touched.add(state.fingerprint)

    def forget(self, before: int) -> list[AlertState]:
        """Drop and return the alerts that are over, in no group, unchanged since
        before ``before`` (ms)."""
        gone = [
            s
            for s in self._alerts.values()
            if not s.active and not s.routes and s.changed_at < before
        ]
        for state in gone:
            del self._alerts[state.fingerprint]
            self.touched.discard(state.fingerprint)
            self.removed.add(state.fingerprint)
        return gone

    def to_dict(self) -> dict[str, Any]:
        return {fp: s.to_dict() for fp, s in self._alerts.items()}

    def restore(self, data: Mapping[str, Any]) -> None:
        self._alerts = {fp: AlertState.from_dict(s) for fp, s in data.items()}
        self.touched, self.removed = set(self._alerts), set()

    def _known(self, fingerprint: str) -> AlertState:
        state = self._alerts.get(fingerprint)
        if state is None:
            raise LifecycleError(f"no alert {fingerprint!r}")
        return state

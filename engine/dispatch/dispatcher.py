"""The dispatcher's logic: alert events and people's actions in, notifications out.

Contract (no I/O, no threads; the caller serialises calls):

- ``receive(event)`` takes an event of the alerts topic (at least once, in order per
  series); ``acknowledge``, ``close``, ``add_silence`` and ``expire_silence`` are the
  people's actions. None of them sends anything.
- ``tick()`` returns the notifications due at the clock's ``now_ms()``, in the order
  to send them (higher levels first); call it often (every second). The next phase
  writes each to the durable outbox before it is attempted, under its ``key``.
- Rate limits: a receiver over its limit gets nothing more in this tick; what was held
  stays pending (its group's newest state goes out when there is room, highest level
  first) and every message that does go to that receiver says how many are waiting.
- Bounded state: an alert that is over (resolved or closed), in no group and unchanged
  for ``forget_after_ms`` is forgotten at a tick and handed to ``on_forget`` (the
  gateway appends it to its history); expired silences go after
  ``SILENCE_RETENTION_MS``; groups close once empty. The state holds what is going on
  plus those windows, however long the gateway runs.
- ``changes()`` is what a store needs since its last call: the state without its
  alerts, the alerts changed and those forgotten (the gateway keeps one key per alert,
  so a tick in a storm writes the alerts it touched, not all of them);
- ``snapshot()`` is the whole state in JSON types; ``Dispatcher.restore(config,
  clock, snapshot)`` continues exactly where it was: the same later inputs at the same
  clock readings give the same notifications, keys included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from engine.contracts.alerts import AlertEvent, Level
from engine.contracts.notification import Notification
from engine.dispatch.clock import Clock
from engine.dispatch.config import DispatchConfig, Route
from engine.dispatch.groups import Group, Groups, latched_levels
from engine.dispatch.inhibit import inhibited
from engine.dispatch.lifecycle import AlertState, Lifecycle
from engine.dispatch.ratelimit import RateLimiter
from engine.dispatch.router import Router, labels_of
from engine.dispatch.silences import Silence, Silences
from rules.durations import format_duration_ms

__all__ = ["FORGET_AFTER_MS", "SILENCE_RETENTION_MS", "Dispatcher"]

#: Expired silences stay listed this long (ms), then are forgotten.
SILENCE_RETENTION_MS = 7 * 86_400_000
#: An alert that is over stays in the state (listed, closable) this long (ms).
FORGET_AFTER_MS = 86_400_000

Make = Callable[[str], Notification]


class Dispatcher:
    """``links(fingerprint, now)``, when given, makes the signed acknowledge URL that
    each notification carries for each of its firing alerts; ``on_forget(state)`` is
    called with each alert the state lets go of (see the module's contract)."""

    def __init__(
        self, config: DispatchConfig, clock: Clock,
        links: Callable[[str, int], str] | None = None,
        *, forget_after_ms: int = FORGET_AFTER_MS,
        on_forget: Callable[[AlertState], None] | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.clock = clock
        self.router = Router(config)
        self.lifecycle = Lifecycle(self._latches)
        self.groups = Groups()
        self.silences = Silences()
        self._links = links
        self.forget_after_ms = forget_after_ms
        self.on_forget = on_forget
        self._routes = config.routes()
        self._limiter = RateLimiter({n: r.rate_limit for n, r in config.receivers.items()})
        self._labels: dict[str, dict[str, str]] = {}
        self._covered: dict[str, str] | None = None  # inhibition, until a state changes

    # --- inputs -------------------------------------------------------------------

    def receive(self, event: AlertEvent) -> bool:
        """Take one alert event; False when it was stale or already taken."""
        now = self.clock.now_ms()
        state = self.lifecycle.apply(event, now)
        if state is None:
            return False
        labels = self._changed(state)
        if event.state == "firing":
            for match in self.router.match(labels):
                if match.route.id not in state.routes:
                    joined = self.groups.join(match.route, labels, state, now)
                    self.lifecycle.join(state, match.route.id, joined.id, now)
            for route_id, membership in state.routes.items():
                group = self.groups.get(membership.group)
                if group is not None:
                    self.groups.raised(group, self._routes[route_id], state.level, now)
        return True

    def acknowledge(self, fingerprint: str, by: str, note: str = "") -> AlertState:
        """A person takes the alert: its repeats and escalation stop. Raises
        ``LifecycleError`` for an unknown or resolved alert."""
        state = self.lifecycle.acknowledge(fingerprint, by, note, self.clock.now_ms())
        self._changed(state)
        return state

    def close(self, fingerprint: str, by: str, feedback: str) -> AlertState:
        """A person closes a resolved alert with feedback (``LifecycleError`` if not)."""
        state = self.lifecycle.close(fingerprint, by, feedback, self.clock.now_ms())
        self._changed(state)
        return state

    def add_silence(
        self, matchers: list[str], starts_at: int, ends_at: int, author: str, comment: str
    ) -> Silence:
        """A silence (times in ms, UTC); ValueError says what is wrong with it."""
        return self.silences.add(matchers, starts_at, ends_at, author, comment, self.clock.now_ms())

    def expire_silence(self, silence_id: str) -> Silence:
        return self.silences.expire(silence_id, self.clock.now_ms())

    # --- what people see ------------------------------------------------------------

    def alerts(self) -> list[tuple[AlertState, str | None]]:
        """Every alert known, with why it is hidden (silenced, covered) or None."""
        now = self.clock.now_ms()
        return [(s, self._hidden(s.fingerprint, now)) for s in self.lifecycle]

    # --- the clock ------------------------------------------------------------------

    def tick(self) -> list[Notification]:
        """The notifications due now, in sending order."""
        now = self.clock.now_ms()
        states = self.lifecycle.states

        def hidden(fp: str) -> str | None:
            return self._hidden(fp, now)

        touched = self.groups.due(now, self._routes)
        for group in touched:
            route = self._routes[group.route_id]
            self.groups.evaluate(group, route, states, hidden, self._repeat_ms, now)
        candidates: list[tuple[int, str, Make]] = []
        for group in self.groups:
            route = self._routes[group.route_id]
            for receiver, progress in group.progress.items():
                if progress.pending:
                    composed = self.groups.compose(
                        group, receiver, route, states, hidden, self._link_at(now), now
                    )
                    if composed is not None:
                        candidates.append((composed[0], receiver, composed[1]))
                        touched.append(group)
        candidates += self._escalations(now, hidden)
        out = self._send(candidates, now)
        for group in {g.id: g for g in touched}.values():
            for fp in self.groups.sweep(group, states):
                self.lifecycle.leave(states[fp], group.route_id)
        self.silences.purge(now - SILENCE_RETENTION_MS)
        for state in self.lifecycle.forget(now - self.forget_after_ms):
            del self._labels[state.fingerprint]
            if self.on_forget is not None:
                self.on_forget(state)
        return out

    def _send(self, candidates: list[tuple[int, str, Make]], now: int) -> list[Notification]:
        # highest level first; the sort is stable, so ties keep group order
        ordered = sorted(candidates, key=lambda c: -c[0])
        chosen: list[tuple[str, Make]] = []
        held: dict[str, int] = {}
        for _, receiver, make in ordered:
            room = self._limiter.room(receiver, now)
            if room is not None and room <= 0:
                held[receiver] = held.get(receiver, 0) + 1
                continue
            self._limiter.sent(receiver, now)
            chosen.append((receiver, make))
        return [
            make(f"{held[r]} more held back by rate limit" if held.get(r) else "")
            for r, make in chosen
        ]

    def _escalations(
        self, now: int, hidden: Callable[[str], str | None]
    ) -> list[tuple[int, str, Make]]:
        batches: dict[tuple[str, str, int], list[AlertState]] = {}
        for state, route_id, step in self.lifecycle.escalations_due(now, self._routes, hidden):
            group_id = state.routes[route_id].group
            batches.setdefault((route_id, group_id, step), []).append(state)
        out = []
        for (route_id, group_id, index), states in batches.items():
            group = self.groups.get(group_id)
            if group is None:
                continue
            level = max(s.level for s in states)
            for receiver in self._routes[route_id].escalation[index].receivers:
                waiting = [s for s in states if receiver not in s.routes[route_id].step_sent]
                if waiting:
                    make = self._escalation(group, route_id, index, receiver, waiting, now)
                    out.append((level, receiver, make))
        return out

    def _escalation(
        self, group: Group, route_id: str, step_index: int, receiver: str,
        states: list[AlertState], now: int,
    ) -> Make:  # fmt: skip
        step = self._routes[route_id].escalation[step_index]
        name = f": {step.name}" if step.name else ""
        note = (
            f"escalation step {step_index + 1}{name}: "
            f"unacknowledged for {format_duration_ms(step.after_ms)}"
        )
        link = self._link_at(now)

        def make(extra: str) -> Notification:
            for state in states:
                self.lifecycle.escalated(state, route_id, receiver, len(step.receivers))
            urls = {s.fingerprint: link(s.fingerprint) for s in states}
            return Notification(
                key=group.next_key(receiver),
                receiver=receiver,
                status="firing",
                level=Level(max(s.level for s in states)).label,
                group_labels=dict(group.labels),
                alerts=tuple(s.event for s in states),
                links={fp: url for fp, url in urls.items() if url},
                created_at=now,
                note="; ".join(n for n in (note, extra) if n),
                latched=latched_levels(states),
            )

        return make

    # --- state ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as JSON types (for the store or a changelog)."""
        return {**self._rest(), "alerts": self.lifecycle.to_dict()}

    def changes(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
        """``(rest, changed, removed)`` since the last call: the snapshot without
        ``alerts``, the alerts changed (fingerprint -> its ``alerts`` entry) and the
        fingerprints forgotten. The first call after construction or ``restore`` has
        every alert; applying each call's result in order to a store rebuilds
        ``snapshot()``."""
        touched, removed = self.lifecycle.take_changes()
        states = self.lifecycle.states
        changed = {fp: states[fp].to_dict() for fp in touched if fp in states}
        return self._rest(), changed, sorted(removed - changed.keys())

    def unstored(self, changed: Mapping[str, Any], removed: list[str]) -> None:
        """A store of ``changes()``'s result failed: they go in the next one again."""
        self.lifecycle.touched.update(changed)
        self.lifecycle.removed.update(removed)

    def _rest(self) -> dict[str, Any]:
        return {
            "version": 1,
            "groups": self.groups.to_dict(),
            "silences": self.silences.to_dict(),
            "rate": self._limiter.to_dict(),
        }

    @classmethod
    def restore(
        cls, config: DispatchConfig, clock: Clock, snapshot: Mapping[str, Any],
        links: Callable[[str, int], str] | None = None, **kwargs: Any,
    ) -> Dispatcher:  # fmt: skip
        """A dispatcher that continues from ``snapshot``. Groups of routes that the
        config no longer has are dropped (their alerts join anew on their next event)."""
        if snapshot.get("version") != 1:
            raise ValueError(f"unknown dispatcher snapshot version {snapshot.get('version')!r}")
        out = cls(config, clock, links, **kwargs)
        out.lifecycle.restore(snapshot["alerts"])
        out.groups.restore(snapshot["groups"], out._routes)
        out.silences = Silences.from_dict(snapshot["silences"])
        out._limiter.restore(snapshot["rate"])
        for state in out.lifecycle:
            state.routes = {
                r: m for r, m in state.routes.items() if out.groups.get(m.group) is not None
            }
            out._changed(state)
        return out

    # --- helpers ----------------------------------------------------------------------

    def _changed(self, state: AlertState) -> dict[str, str]:
        labels = {**labels_of(state.event), "level": Level(state.level).label}
        self._labels[state.fingerprint] = labels
        self._covered = None
        return labels

    def _hidden(self, fp: str, now: int) -> str | None:
        """Why the alert is not notified now (``silenced by s3``, ``covered by ...``)."""
        labels = self._labels[fp]
        silence = self.silences.silencing(labels, now)
        if silence is not None:
            return f"silenced by {silence}"
        if self._covered is None:
            active = [
                (s.fingerprint, self._labels[s.fingerprint], s.level)
                for s in self.lifecycle
                if s.active
            ]
            self._covered = inhibited(self.config.inhibit, active)
        rule = self._covered.get(fp)
        return None if rule is None else f"covered by {rule}"

    def _latches(self, level: int) -> bool:
        return level > 0 and self.config.levels[Level(level).label].latch

    def _repeat_ms(self, level: int) -> int:
        return self.config.levels[Level(level).label].repeat_ms if level > 0 else 0

    def _link_at(self, now: int) -> Callable[[str], str | None]:
        links = self._links
        if links is None:
            return lambda fp: None
        return lambda fp: links(fp, now)

    @property
    def routes(self) -> Mapping[str, Route]:
        return self._routes

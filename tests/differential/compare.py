"""Live alert events against a replay's, event for event, and a report of the differences.

An event is compared by its identity and times: fingerprint (with rule, station and
metric, which it hashes, for the report), previous and new level, ``at`` and
``started_at``. The live side is deduplicated by (fingerprint, at, level), the dispatcher's
idempotency key, as on-call staff see it.

A series' events at one ``at`` that begin with a raise count as one step, from the
first's level to the last's (none when they are the same), on both sides. Live, a window
that the watermark closed while its sensor was silent raises the level at once on what
was known; when the sensor's backlog reopens the window, it is decided again, at the same
``at``, as the replay decides it (``engine.evaluation.runners.windowed``): a raise in two
steps (yellow, then orange) where the replay, which had the backlog all along, has one,
or a raise lowered at once. A run that begins with a lowering (a window closes and
clears, the reading that closed it raises again) stays event for event.

Readings out of order (``disorder_ms``: a reading reaching the gateway after its
sensor's next one, at most that long after its own time) cannot be compared event for
event: the live engine alerts at once on what it has seen and cannot take an alert back,
so a late reading that would have raised blue at 17:00, arriving after the 17:05 one that
raised yellow, leaves "none -> yellow at 17:05" where the replay has two events. What
must hold, and is checked instead, is what on-call staff rely on: every escalation of
the replay reaches them live at that level or higher, no earlier and at most
``disorder_ms`` later (*missing* otherwise); no live escalation lacks such a replay one
(*extra*: a false alarm); and every series ends at the replay's level.

Only events at or before ``cutoff`` are compared: the replay closes every window at the
end of its input, as if time had moved on, and raises silence at the end of time; the
live engine has closed a window once its event time is ``lateness`` past the window's
end. Every station of the traffic reports up to ``Traffic.end_ms``, so by then the live
engine has decided everything up to ``end_ms - lateness``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from engine.contracts.alerts import AlertEvent
from engine.contracts.ruleset import RuleSet

__all__ = ["Diff", "compare", "cutoff", "timed_compounds"]

#: (fingerprint, rule, station, metric, previous level, level, at, started_at)
Key = tuple[str, str, str, str, str, str, int, int]

#: A margin below ``end_ms - lateness``: one reporting interval (ms).
MARGIN_MS = 5 * 60_000


def cutoff(end_ms: int, lateness_ms: int) -> int:
    """The latest ``at`` (ms) both sides have decided when every station reported up to
    ``end_ms`` and the live engine waits ``lateness_ms`` before closing a window."""
    return end_ms - lateness_ms - MARGIN_MS


def key(e: AlertEvent) -> Key:
    return (e.fingerprint, e.rule_id, e.station, e.metric, e.previous_level, e.level, e.at,
            e.started_at)  # fmt: skip


def _steps(keys: Iterable[Key]) -> set[Key]:
    """``keys`` (in the order raised) with each series' run of events at one ``at`` that
    begins with a raise as one step (module doc)."""
    runs: dict[tuple[str, int], list[Key]] = defaultdict(list)
    for k in keys:
        runs[k[0], k[6]].append(k)
    out: set[Key] = set()
    for run in runs.values():
        first, last = run[0], run[-1]
        if len(run) == 1 or _rank(first[5]) < _rank(first[4]):
            out.update(run)
        elif first[4] != last[5]:
            out.add((*first[:5], last[5], first[6], last[7]))
    return out


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%m-%d %H:%M:%S")


def _show(k: Key) -> str:
    _, rule, station, metric, prev, level, at, started = k
    return f"{rule} {station}/{metric} {prev}->{level} at {_time(at)} (started {_time(started)})"


@dataclass
class Diff:
    missing: list[Key]  # replay has it, live does not
    extra: list[Key]  # live has it, replay does not
    live_repeats: int  # events the live side delivered more than once (same key)
    compared: int  # replay events up to the cutoff

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra)

    def kinds(self) -> Counter[str]:
        """Per rule and kind of difference: ``missing``, ``extra``, ``started_at``, ``at``."""
        out: Counter[str] = Counter()
        for line in self.lines():
            out[line.split(":", 1)[0]] += 1
        return out

    def lines(self) -> list[str]:
        """One line per difference; a missing and an extra event of the same transition
        are paired as a moved ``at`` or a different ``started_at``."""
        by_transition: dict[tuple[str, ...], list[Key]] = defaultdict(list)
        for k in self.extra:
            by_transition[(*k[:6],)].append(k)
        out = []
        for k in sorted(self.missing, key=lambda k: (k[6], k[1], k[2])):
            candidates = by_transition.get((*k[:6],))
            if candidates:
                same_at = [c for c in candidates if c[6] == k[6]]
                other = same_at[0] if same_at else min(candidates, key=lambda c: abs(c[6] - k[6]))
                candidates.remove(other)
                if other[6] == k[6]:
                    out.append(f"{k[1]} started_at: {_show(k)}; live started {_time(other[7])}")
                else:
                    out.append(f"{k[1]} at: {_show(k)}; live at {_time(other[6])}")
            else:
                out.append(f"{k[1]} missing: {_show(k)}")
        rest = sorted((k for ks in by_transition.values() for k in ks), key=lambda k: k[6])
        out += [f"{k[1]} extra: {_show(k)}" for k in rest]
        return out

    def report(self, limit: int = 40) -> str:
        lines = self.lines()
        head = (
            f"live differs from replay in {len(lines)} events of {self.compared} "
            f"(by rule and kind: {dict(sorted(self.kinds().items()))}); "
            f"{self.live_repeats} live events delivered more than once"
        )
        more = [f"... {len(lines) - limit} more"] if len(lines) > limit else []
        return "\n".join([head, *lines[:limit], *more])


def _rank(level: str) -> int:
    return ("none", "blue", "yellow", "orange", "red").index(level)


def _escalations_covered(
    want: set[Key], got: set[Key], disorder_ms: int
) -> tuple[list[Key], list[Key]]:
    """(replay escalations not reached live in time, live escalations not in the replay):
    matched by fingerprint, level at least the other's, ``at`` within the disorder."""

    def ups(keys: set[Key]) -> dict[str, list[Key]]:
        out: dict[str, list[Key]] = defaultdict(list)
        for k in keys:
            if _rank(k[5]) > _rank(k[4]):
                out[k[0]].append(k)
        return out

    live_ups, replay_ups = ups(got), ups(want)
    missing = [
        k for ks in replay_ups.values() for k in ks
        if not any(_rank(c[5]) >= _rank(k[5]) and 0 <= c[6] - k[6] <= disorder_ms
                   for c in live_ups.get(k[0], []))
    ]  # fmt: skip
    extra = [
        c for cs in live_ups.values() for c in cs
        if not any(_rank(k[5]) >= _rank(c[5]) and 0 <= c[6] - k[6] <= disorder_ms
                   for k in replay_ups.get(c[0], []))
    ]  # fmt: skip
    return sorted(missing), sorted(extra)


def _final_levels(keys: set[Key]) -> dict[str, Key]:
    last: dict[str, Key] = {}
    for k in sorted(keys, key=lambda k: k[6]):
        last[k[0]] = k
    return last


def compare(
    live: Iterable[AlertEvent],
    replayed: Iterable[AlertEvent],
    until: int,
    disorder_ms: int = 0,
    compound: frozenset[str] = frozenset(),
) -> Diff:
    """The differences between ``live`` and ``replayed`` events with ``at <= until`` (ms);
    ``disorder_ms``: the traffic's longest delay of a reading behind its sensor's next
    (0: in order, compared event for event).

    ``compound``: the ids of compound rules with a ``for``, whose clauses are decided at
    different times (an early-firing level clause, a window-closing rain clause): live,
    a combination may fire that a clause decided later shows had not held for its
    ``for`` (a false alarm, cleared when that clause comes in). For them every replay
    escalation must be reached live, in time, and each series must end at the replay's
    level; an extra live escalation is the README's stated limit, not a difference."""
    seen: dict[str, Key] = {}
    repeats = 0
    for e in live:
        if e.at > until:
            continue
        if e.key in seen:
            repeats += 1
            continue
        seen[e.key] = key(e)
    got_all = _steps(seen.values())
    want_all = _steps(key(e) for e in replayed if e.at <= until)
    got = {k for k in got_all if k[1] not in compound}
    want = {k for k in want_all if k[1] not in compound}
    loose_got, loose_want = got_all - got, want_all - want
    missing, extra = _escalations_covered(loose_want, loose_got, disorder_ms)
    missing += _ends_differ(loose_got, loose_want)
    if not disorder_ms:
        missing += sorted(want - got)
        return Diff(sorted(set(missing)), sorted(got - want), repeats, len(want_all))
    exact_missing, extra = _escalations_covered(want, got, disorder_ms)
    missing += exact_missing
    ends_live, ends_replay = _final_levels(got), _final_levels(want)
    for fp in ends_live.keys() | ends_replay.keys():
        a, b = ends_live.get(fp), ends_replay.get(fp)
        if (a and a[5]) != (b and b[5]):  # the series ends at another level
            if b is not None:
                missing.append(b)
            if a is not None:
                extra.append(a)
    return Diff(sorted(set(missing)), sorted(set(extra)), repeats, len(want_all))


def _ends_differ(got: set[Key], want: set[Key]) -> list[Key]:
    """The replay's last event of each series whose live series ends at another level."""
    ends_live, ends_replay = _final_levels(got), _final_levels(want)
    return [
        b
        for fp, b in ends_replay.items()
        if (ends_live[fp][5] if fp in ends_live else "none") != b[5]
    ]


def timed_compounds(ruleset: RuleSet) -> frozenset[str]:
    """The compound rules with a ``for`` (``compare``'s ``compound``)."""
    return frozenset(c.rule_id for c in ruleset.compound if c.for_ms > 0)

"""Live alert events against a replay's, event for event, and a report of the differences.

An event is compared by its identity and times: fingerprint (with rule, station and
metric, which it hashes, for the report), previous and new level, ``at`` and
``started_at``. The live side is deduplicated by (fingerprint, at), the dispatcher's
idempotency key, as on-call staff see it.

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

from engine.alerts import AlertEvent

__all__ = ["Diff", "compare", "cutoff"]

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


def compare(live: Iterable[AlertEvent], replayed: Iterable[AlertEvent], until: int) -> Diff:
    """The differences between ``live`` and ``replayed`` events with ``at <= until`` (ms)."""
    seen: dict[tuple[str, int], Key] = {}
    repeats = 0
    for e in live:
        if e.at > until:
            continue
        if (e.fingerprint, e.at) in seen:
            repeats += 1
            continue
        seen[(e.fingerprint, e.at)] = key(e)
    got = set(seen.values())
    want = {key(e) for e in replayed if e.at <= until}
    return Diff(sorted(want - got), sorted(got - want), repeats, len(want))

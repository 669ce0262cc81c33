"""Silences: "do not notify alerts matching these labels from ... until ...".

A silenced alert is kept, with its state, and shown as silenced; it is only not
notified (and does not escalate). A silence is active while ``starts_at <= now <
ends_at`` (ms, UTC, the dispatcher's clock), so it expires by itself; ``expire`` ends
one now. Ids are ``s1``, ``s2`` ... in the order they were added, so that a dispatcher
restored from its state gives the next silence the id an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from engine.dispatch.matchers import Matcher, matches_all, parse_matcher

__all__ = ["Silence", "Silences"]


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: int
    ends_at: int
    author: str
    comment: str
    created_at: int

    def state(self, now: int) -> Literal["pending", "active", "expired"]:
        if now < self.starts_at:
            return "pending"
        return "active" if now < self.ends_at else "expired"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "matchers": [str(m) for m in self.matchers],
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "author": self.author,
            "comment": self.comment,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Silence:
        return cls(**{**data, "matchers": tuple(parse_matcher(m) for m in data["matchers"])})


class Silences:
    """The silences of one dispatcher, in the order they were added."""

    def __init__(self) -> None:
        self._by_id: dict[str, Silence] = {}
        self._added = 0

    def add(
        self, matchers: list[str] | tuple[Matcher, ...], starts_at: int, ends_at: int,
        author: str, comment: str, now: int,
    ) -> Silence:  # fmt: skip
        """A new silence. Raises ValueError for no matchers, a bad matcher, an end not
        after its start or in the past, or no author."""
        parsed = tuple(m if isinstance(m, Matcher) else parse_matcher(m) for m in matchers)
        if not parsed:
            raise ValueError("a silence needs at least one matcher; it would silence everything")
        if ends_at <= starts_at:
            raise ValueError(f"a silence must end after it starts, got {starts_at}..{ends_at}")
        if ends_at <= now:
            raise ValueError("a silence must end in the future")
        if not author.strip():
            raise ValueError("a silence needs an author: who to ask about it")
        self._added += 1
        silence = Silence(f"s{self._added}", parsed, starts_at, ends_at, author, comment, now)
        self._by_id[silence.id] = silence
        return silence

    def expire(self, silence_id: str, now: int) -> Silence:
        """End a silence now; raises KeyError naming the unknown id."""
        silence = self._by_id.get(silence_id)
        if silence is None:
            raise KeyError(f"no silence {silence_id!r}")
        if silence.ends_at > now:
            silence = Silence(**{**silence.__dict__, "ends_at": max(now, silence.starts_at)})
            self._by_id[silence_id] = silence
        return silence

    def list_at(self, now: int) -> list[tuple[Silence, str]]:
        """Every silence with its state at ``now`` (pending, active, expired)."""
        return [(s, s.state(now)) for s in self._by_id.values()]

    def silencing(self, labels: Mapping[str, str], now: int) -> str | None:
        """The id of the first active silence matching ``labels``, or None."""
        for silence in self._by_id.values():
            if silence.state(now) == "active" and matches_all(silence.matchers, labels):
                return silence.id
        return None

    def purge(self, before: int) -> None:
        """Forget silences that ended before ``before`` (ms)."""
        self._by_id = {k: s for k, s in self._by_id.items() if s.ends_at >= before}

    def to_dict(self) -> dict[str, Any]:
        return {"added": self._added, "silences": [s.to_dict() for s in self._by_id.values()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Silences:
        out = cls()
        out._added = data["added"]
        out._by_id = {s["id"]: Silence.from_dict(s) for s in data["silences"]}
        return out

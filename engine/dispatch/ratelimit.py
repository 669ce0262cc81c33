"""Per-receiver rate limits: at most N messages in any window of ``per`` ms.

A sliding window of the times of the messages sent (not a token bucket): "6 per
minute" then means what an SMS gateway's operator means by it. Nothing is dropped
here; the dispatcher keeps what it could not send and says so in the next message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.dispatch.schema import RateLimitSpec

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, limits: Mapping[str, RateLimitSpec | None]) -> None:
        self._limits = {name: limit for name, limit in limits.items() if limit is not None}
        self._sent: dict[str, list[int]] = {name: [] for name in self._limits}

    def room(self, receiver: str, now: int) -> int | None:
        """How many more messages ``receiver`` may get at ``now``; None = no limit."""
        limit = self._limits.get(receiver)
        if limit is None:
            return None
        sent = self._sent[receiver]
        while sent and sent[0] <= now - limit.per:
            sent.pop(0)
        return max(0, limit.messages - len(sent))

    def sent(self, receiver: str, now: int) -> None:
        if receiver in self._limits:
            self._sent[receiver].append(now)

    def to_dict(self) -> dict[str, Any]:
        return {name: list(times) for name, times in self._sent.items() if times}

    def restore(self, data: Mapping[str, Any]) -> None:
        for name, times in data.items():
            if name in self._sent:
                self._sent[name] = list(times)

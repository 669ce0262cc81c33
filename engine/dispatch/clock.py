"""The dispatcher's wall clock, as an object that tests advance.

Group, repeat, escalation and silence timers all read ``Clock.now_ms()`` (ms since the
epoch, UTC); nothing in ``dispatch/`` calls ``time`` itself, so a test drives hours of
on-call life in microseconds and never sleeps for a timer (STYLE.md habit 9).
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time in ms since the epoch, UTC."""
        ...


class SystemClock:
    """The machine's wall clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to; it never goes backwards."""

    def __init__(self, start_ms: int = 0) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> int:
        """Move forward by ``ms`` (>= 0); returns the new time."""
        if ms < 0:
            raise ValueError(f"a clock does not go backwards, got advance({ms})")
        self._now += ms
        return self._now

    def set(self, now_ms: int) -> int:
        """Move forward to ``now_ms``; returns it."""
        return self.advance(now_ms - self._now)

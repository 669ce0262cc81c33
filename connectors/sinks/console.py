"""Alert events as one coloured line each on a terminal."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TextIO

from engine.contracts.alerts import AlertEvent, Level

__all__ = ["ConsoleSink", "format_event"]

_COLOURS = {
    Level.NONE: "\033[32m",  # green: all clear
    Level.BLUE: "\033[34m",
    Level.YELLOW: "\033[33m",
    Level.ORANGE: "\033[38;5;208m",
    Level.RED: "\033[31m",
}
_RESET = "\033[0m"


def format_event(event: AlertEvent, colour: bool = False) -> str:
    """``2023-04-23 04:15Z  ▲ ORANGE  HZ001 ...`` : time, direction, level, summary."""
    level, previous = Level.parse(event.level), Level.parse(event.previous_level)
    when = datetime.fromtimestamp(event.at / 1000, UTC).strftime("%Y-%m-%d %H:%MZ")
    arrow = "▲" if level > previous else "▼"
    tag = "ALL CLEAR" if level is Level.NONE else level.name
    text = f"{when}  {arrow} {tag:<9} {event.summary}"
    if colour:
        text = f"{_COLOURS[level]}{text}{_RESET}"
    return text


class ConsoleSink:
    name = "console"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._colour = self._stream.isatty()

    async def deliver(self, event: AlertEvent) -> None:
        print(format_event(event, self._colour), file=self._stream, flush=True)

    def flush(self) -> None:
        return None  # printed and flushed at delivery; a terminal keeps nothing

    def delivered_keys(self) -> set[str]:
        return set()

    def close(self) -> None:
        return None

"""Durations written in rule files and registries: ``"90s"``, ``"15m"``, ``"1h"``, ``"1d"``.

Contract: ``parse_duration_ms(text) -> int`` milliseconds, > 0, or ``ValueError`` with a
message a hydrologist can act on. Bare numbers are refused on purpose: ``window: 15`` is
ambiguous (seconds? minutes?), and a silent guess is how alarms end up an hour late.
"""

from __future__ import annotations

import re

__all__ = ["format_duration_ms", "parse_duration_ms"]

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration_ms(text: object) -> int:
    """``"15m"`` -> 900000. Raises ValueError naming what was expected."""
    if isinstance(text, str):
        match = _DURATION.match(text)
        if match:
            ms = round(float(match.group(1)) * _UNIT_MS[match.group(2)])
            if ms > 0:
                return ms
            raise ValueError(f"duration must be positive, got {text!r}")
    raise ValueError(f"expected a duration like '15m', '1h', '90s' or '1d', got {text!r}")


def format_duration_ms(ms: int) -> str:
    """900000 -> ``"15m"``; the largest unit that divides evenly."""
    for unit in ("d", "h", "m", "s"):
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"

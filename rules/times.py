"""Times written by people: ISO 8601 with or without an offset, epoch milliseconds, and
the time zone that gives a time without an offset its meaning.

Contract:

- ``parse_tz(text)``: ``UTC``, a fixed offset (``+08:00``, ``-0500``) or an IANA name
  (``Asia/Shanghai``, ``America/Chicago``: daylight saving time included); ValueError
  naming both forms otherwise.
- ``to_ms(raw, tz)``: ms since the epoch, UTC. ``raw`` is an ``int`` (already ms), a
  ``datetime`` (as YAML reads an unquoted timestamp) or text: digits (ms) or ISO 8601.
  A time without an offset takes ``tz``; with ``tz`` None it raises ``NaiveTime``, never
  a guess (a gauge's local time read as UTC moves every alert by hours). A local time
  that a daylight-saving change makes ambiguous is read as its first occurrence.
- ``format_ms(ms, tz)``: ISO 8601 to the second with the offset, in ``tz`` (UTC if None).
- ``window_shift_ms(size_ms, align, tz)``: the shift that starts windows of ``size_ms``
  at local time ``align`` (``HH:MM``) in ``tz``; ValueError when the zone's daylight
  saving time would move those boundaries during the year.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["NaiveTime", "format_ms", "parse_align", "parse_tz", "to_ms", "window_shift_ms"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")
_ALIGN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
#: Mid-January and mid-July of 2020-2039: a zone's winter and summer offsets.
_SEASONS = [datetime(y, m, 15, tzinfo=UTC) for y in range(2020, 2040) for m in (1, 7)]


class NaiveTime(ValueError):
    """A time without a UTC offset, read where no time zone was given."""


def parse_tz(text: str) -> tzinfo:
    """``"+08:00"``, ``"UTC"`` or ``"Asia/Shanghai"`` as a tzinfo; ValueError otherwise."""
    text = text.strip()
    if text.upper() in ("UTC", "Z"):
        return UTC
    match = _OFFSET.match(text)
    if match:
        sign = -1 if match.group(1) == "-" else 1
        return timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    raise ValueError(
        f"unknown time zone {text!r}: give an IANA name such as 'Asia/Shanghai' "
        "or an offset such as '+08:00'"
    )


def to_ms(raw: str | int | datetime, tz: tzinfo | None = None) -> int:
    """``raw`` as ms since the epoch (UTC); see the module's contract."""
    if isinstance(raw, bool):
        raise ValueError(f"expected a time, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, datetime):
        parsed = raw
    else:
        text = str(raw).strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"time {text!r} is not ISO 8601 nor epoch ms") from None
    if parsed.tzinfo is None:
        if tz is None:
            raise NaiveTime(f"time {str(raw).strip()!r} has no UTC offset")
        parsed = parsed.replace(tzinfo=tz)
    return (parsed - EPOCH) // _ONE_MS


def format_ms(ms: int, tz: tzinfo | None = None) -> str:
    """``ms`` (UTC epoch) as ISO 8601 in ``tz``: ``2023-04-24T09:00:00-05:00``."""
    return (EPOCH + ms * _ONE_MS).astimezone(tz or UTC).isoformat(timespec="seconds")


def parse_align(text: str) -> int:
    """``"08:00"`` as ms after midnight; ValueError otherwise."""
    match = _ALIGN.match(text.strip())
    if not match:
        raise ValueError(f"align {text!r} is not a time of day HH:MM such as '08:00'")
    return (int(match.group(1)) * 60 + int(match.group(2))) * 60_000


def window_shift_ms(size_ms: int, align_ms: int, tz: tzinfo) -> int:
    """The shift ``s`` (ms, ``0 <= s < size_ms``) that starts windows of ``size_ms`` at
    ``align_ms`` after local midnight in ``tz``: a window starts at UTC ms ``b`` when
    ``(b + s) % size_ms == 0`` (Beijing 08:00 days: 0; India 07:00 days: 22.5 h).

    A zone whose UTC offset changes (daylight saving time, judged on its rules of
    2020-2039) is accepted only when the change does not move the boundaries (an hour's
    DST under hourly windows); otherwise ValueError, naming both offsets."""
    shifts: dict[int, timedelta] = {}
    for when in _SEASONS:
        offset = tz.utcoffset(when.astimezone(tz))
        assert offset is not None  # a tzinfo from parse_tz always has one
        shifts.setdefault((offset // _ONE_MS - align_ms) % size_ms, offset)
    if len(shifts) > 1:
        a, b = sorted(shifts.values())[:2]
        raise ValueError(
            f"time zone {tz} changes its UTC offset during the year ({_hours(a)} and "
            f"{_hours(b)}, daylight saving time), which moves the boundaries of these "
            "windows; give the fixed offset the agency counts in, such as '+01:00'"
        )
    return next(iter(shifts))


def _hours(offset: timedelta) -> str:
    minutes = offset // timedelta(minutes=1)
    sign = "-" if minutes < 0 else "+"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"

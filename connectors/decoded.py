"""What the field-protocol decoders (``connectors.sl651``, ``connectors.hj212``) produce.

A decoder is a pure function from one frame's bytes to a decoded frame (header, values
and :class:`Reading` s) or a :class:`Rejection` that names what is wrong and keeps the
bytes: it never raises for bad input, so an ingest path can dead-letter the rejection
with its reason and raw bytes and go on.

A reading's ``station`` is the protocol's own station identity (SL 651 station address
as 10 hex digits, HJ 212 MN); the server maps it to a Vigil station through the registry.
``ts_ms`` is event time in ms since the epoch, UTC: both protocols send local clock time
without a zone, read by default as China Standard Time (UTC+8, no daylight saving).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

__all__ = ["CST_OFFSET_MIN", "FrameError", "Reading", "Rejection", "local_ms"]

#: China Standard Time, the clock both protocols' stations keep (minutes east of UTC).
CST_OFFSET_MIN = 480

_EPOCH = datetime(1970, 1, 1)  # naive: the local fields are shifted by the offset below


class Reading(NamedTuple):
    """One value as the telemetry batch takes it (``engine.contracts.batch.BatchBuilder.add``)."""

    station: str
    metric: str
    ts_ms: int  # event time, ms since epoch, UTC
    value: float  # in the metric's unit (the element table says which)
    quality: int  # engine.contracts.batch.Quality


@dataclass(frozen=True, slots=True)
class Rejection:
    """A frame that cannot be taken: ``reason`` says exactly why, ``raw`` is the frame."""

    reason: str
    raw: bytes

    def __bool__(self) -> bool:  # so that `if not decoded:` reads as "rejected"
        return False


class FrameError(ValueError):
    """Raised inside a decoder; its text becomes the :class:`Rejection` reason."""


def local_ms(
    year: int, month: int, day: int, hour: int, minute: int, second: int, offset_min: int, what: str
) -> int:
    """Local clock fields -> epoch ms (UTC); FrameError naming ``what`` when not a time."""
    try:
        naive = datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise FrameError(
            f"bad {what} {year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d}"
        ) from exc
    return (int((naive - _EPOCH).total_seconds()) - offset_min * 60) * 1000

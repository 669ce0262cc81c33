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

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from engine.contracts.batch import ReadingBlock

__all__ = ["CST_OFFSET_MIN", "Columns", "FrameError", "Reading", "Rejection", "blocks", "local_ms"]

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


@dataclass(frozen=True, slots=True)
class Columns:
    """Readings of one station as a batch decoder's columns, quality UNCHECKED: the
    ``i`` th is (``station``, ``metrics[metric[i]]``, ``ts[i]`` ms UTC, ``value[i]``)."""

    station: str
    metrics: tuple[str, ...]
    metric: npt.NDArray[np.int16]
    ts: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]


def blocks(columns: Sequence[Columns]) -> list[ReadingBlock]:
    """Columns (of any stations, from any connections) -> one ``ReadingBlock`` per
    station and metric, each in the order its readings came: a handful of NumPy calls
    per batch and a block per sensor, not a tuple per reading."""
    stations: dict[str, int] = {}
    metric_ids: dict[str, int] = {}  # a metric's name -> its id, whichever table names it
    tables: dict[tuple[str, ...], npt.NDArray[np.int64]] = {}  # table index -> metric id
    keys = []
    for c in columns:
        ids = tables.get(c.metrics)
        if ids is None:
            ids = tables[c.metrics] = np.array(
                [metric_ids.setdefault(m, len(metric_ids)) for m in c.metrics], np.int64
            )
        keys.append(ids[c.metric] + (stations.setdefault(c.station, len(stations)) << 16))
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    if not len(key):
        return []
    order = np.argsort(key, kind="stable")
    key = key[order]
    ts = np.concatenate([c.ts for c in columns])[order].tolist()
    value = np.concatenate([c.value for c in columns])[order].tolist()
    cuts = [0, *(np.flatnonzero(key[1:] != key[:-1]) + 1).tolist(), len(key)]
    station_of, metric_of = list(stations), list(metric_ids)
    out = []
    for a, b, k in zip(cuts, cuts[1:], key[cuts[:-1]].tolist(), strict=False):
        st, metric = station_of[k >> 16], metric_of[k & 0xFFFF]
        out.append(ReadingBlock(st, metric, ts[a:b], value[a:b]))
    return out

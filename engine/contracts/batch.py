"""The telemetry batch: many readings of one partition as columnar arrays.

One Faust/Kafka record carries one batch, never one reading: per-record overhead in
Faust and Kafka is far larger than the kernels' cost per reading.

Wire format (msgpack map, version 1)::

    {"v": 1,
     "stations": [str, ...],        # station ids referenced by "si"
     "metrics":  [str, ...],        # metric names referenced by "mi"
     "si": bytes,                   # <u4[n] index into "stations"
     "mi": bytes,                   # <u2[n] index into "metrics"
     "ts": bytes,                   # <i8[n] event time, ms since epoch, UTC
     "value": bytes,                # <f8[n]
     "q": bytes,                    # u1[n] quality flag (see Quality)
     "tick": [wall_ms, every_ms]}   # optional, on a tick only (see Tick)

All buffers are raw little-endian so that decoding is a zero-copy ``np.frombuffer``.
A *tick* is a batch without readings that carries the wall clock of the worker that wrote
it (``engine.runtime.topology``), so that a partition that gets no readings still sees time pass:
its silent sensors are found on the wall clock (``PartitionProcessor.on_tick``). Ticks
are never counted as readings. A decoder that predates them reads a tick as an empty batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from itertools import repeat
from typing import NamedTuple

import msgpack
import numpy as np
import numpy.typing as npt

__all__ = [
    "BatchBuilder",
    "BatchDecodeError",
    "Quality",
    "ReadingBlock",
    "TelemetryBatch",
    "Tick",
]

WIRE_VERSION = 1


class Quality(IntEnum):
    """Per-reading quality flag (after IOOS QARTOD)."""

    UNCHECKED = 0
    GOOD = 1
    SUSPECT = 3
    FAIL = 4
    MISSING = 9


class BatchDecodeError(ValueError):
    """A telemetry record that is not a valid batch."""


class Tick(NamedTuple):
    """The wall clock written into a telemetry partition, every ``every_ms``."""

    wall_ms: int  # the writer's wall clock, ms since epoch, UTC
    every_ms: int  # the interval between ticks (ms), > 0


def _tick(raw: object) -> Tick | None:
    if raw is None:
        return None
    if isinstance(raw, list) and len(raw) == 2 and all(type(x) is int for x in raw) and raw[1] > 0:
        return Tick(raw[0], raw[1])
    raise BatchDecodeError(f"bad tick: expected [wall_ms, every_ms > 0], got {raw!r}")


@dataclass(frozen=True, slots=True)
class TelemetryBatch:
    """Readings as parallel arrays; ``stations[station_idx[i]]`` is reading i's station."""

    stations: tuple[str, ...]
    metrics: tuple[str, ...]
    station_idx: npt.NDArray[np.uint32]
    metric_idx: npt.NDArray[np.uint16]
    ts: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    quality: npt.NDArray[np.uint8]
    tick: Tick | None = None  # set on a tick, which has no readings

    def __post_init__(self) -> None:
        n = len(self.ts)
        if n and self.tick is not None:
            raise BatchDecodeError(f"a tick carries no readings, this one has {n}")
        for name in ("station_idx", "metric_idx", "value", "quality"):
            if len(getattr(self, name)) != n:
                raise BatchDecodeError(
                    f"column {name!r} has {len(getattr(self, name))} rows, ts has {n}"
                )
        if n and int(self.station_idx.max()) >= len(self.stations):
            raise BatchDecodeError("station index out of range")
        if n and int(self.metric_idx.max()) >= len(self.metrics):
            raise BatchDecodeError("metric index out of range")

    def __len__(self) -> int:
        return len(self.ts)

    def rows(self) -> Iterable[tuple[str, str, int, float, int]]:
        """Readings one by one as (station, metric, ts_ms, value, quality); for tests and sinks."""
        for s, m, t, v, q in zip(
            self.station_idx.tolist(),
            self.metric_idx.tolist(),
            self.ts.tolist(),
            self.value.tolist(),
            self.quality.tolist(),
            strict=True,
        ):
            yield self.stations[s], self.metrics[m], t, v, q

    def encode(self) -> bytes:
        record = {
            "v": WIRE_VERSION,
            "stations": list(self.stations),
            "metrics": list(self.metrics),
            "si": self.station_idx.astype("<u4", copy=False).tobytes(),
            "mi": self.metric_idx.astype("<u2", copy=False).tobytes(),
            "ts": self.ts.astype("<i8", copy=False).tobytes(),
            "value": self.value.astype("<f8", copy=False).tobytes(),
            "q": self.quality.astype("u1", copy=False).tobytes(),
        }
        if self.tick is not None:
            record["tick"] = list(self.tick)
        return msgpack.packb(record, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> TelemetryBatch:
        """Parse the wire format; raises BatchDecodeError with the reason."""
        try:
            obj = msgpack.unpackb(data, raw=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise BatchDecodeError(f"not msgpack: {exc}") from exc
        if not isinstance(obj, dict) or obj.get("v") != WIRE_VERSION:
            raise BatchDecodeError(f"not a version {WIRE_VERSION} telemetry batch")
        tick = _tick(obj.get("tick"))
        try:
            return cls(
                stations=tuple(obj["stations"]),
                metrics=tuple(obj["metrics"]),
                station_idx=np.frombuffer(obj["si"], dtype="<u4"),
                metric_idx=np.frombuffer(obj["mi"], dtype="<u2"),
                ts=np.frombuffer(obj["ts"], dtype="<i8"),
                value=np.frombuffer(obj["value"], dtype="<f8"),
                quality=np.frombuffer(obj["q"], dtype="u1"),
                tick=tick,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BatchDecodeError(f"bad batch column: {exc}") from exc

    @classmethod
    def of_tick(cls, tick: Tick) -> TelemetryBatch:
        """A tick: no readings, the wall clock."""
        return replace(BatchBuilder().build(), tick=tick)

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[str, str, int, float]]) -> TelemetryBatch:
        """Build a batch from (station, metric, ts_ms, value) tuples."""
        builder = BatchBuilder()
        for station, metric, ts, value in rows:
            builder.add(station, metric, ts, value)
        return builder.build()


@dataclass(frozen=True, slots=True)
class ReadingBlock:
    """Readings of one sensor that arrived together (an MQTT payload's list), as two
    columns: a connector hands them on without a tuple per reading. ``ts``: epoch ms
    UTC, ``value`` in the metric's unit, of equal length; quality UNCHECKED."""

    station: str
    metric: str
    ts: list[int]
    value: list[float]

    def __len__(self) -> int:
        return len(self.ts)


class BatchBuilder:
    """Accumulates readings and interns station and metric names."""

    def __init__(self) -> None:
        self._stations: dict[str, int] = {}
        self._metrics: dict[str, int] = {}
        self._si: list[int] = []
        self._mi: list[int] = []
        self._ts: list[int] = []
        self._value: list[float] = []
        self._q: list[int] = []

    def __len__(self) -> int:
        return len(self._ts)

    def add(
        self, station: str, metric: str, ts_ms: int, value: float, quality: int = Quality.UNCHECKED
    ) -> None:
        self._si.append(self._stations.setdefault(station, len(self._stations)))
        self._mi.append(self._metrics.setdefault(metric, len(self._metrics)))
        self._ts.append(ts_ms)
        self._value.append(value)
        self._q.append(int(quality))

    def add_block(self, block: ReadingBlock) -> None:
        """The block's readings, in order, as ``add`` would take them one by one."""
        n = len(block.ts)
        self._si.extend(repeat(self._stations.setdefault(block.station, len(self._stations)), n))
        self._mi.extend(repeat(self._metrics.setdefault(block.metric, len(self._metrics)), n))
        self._ts.extend(block.ts)
        self._value.extend(block.value)
        self._q.extend(repeat(int(Quality.UNCHECKED), n))

    def build(self) -> TelemetryBatch:
        return TelemetryBatch(
            stations=tuple(self._stations),
            metrics=tuple(self._metrics),
            station_idx=np.asarray(self._si, dtype=np.uint32),
            metric_idx=np.asarray(self._mi, dtype=np.uint16),
            ts=np.asarray(self._ts, dtype=np.int64),
            value=np.asarray(self._value, dtype=np.float64),
            quality=np.asarray(self._q, dtype=np.uint8),
        )

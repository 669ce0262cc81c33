"""The duty room's station board: each sensor's last reading and a short trace of it.

``StationBoard.observe`` is called with every telemetry batch the topology evaluates
(``Topology.batch_listeners``, on the event loop, after the kernels). Per sensor
(station, metric) it keeps

* the newest reading by event time (of equal times, the later one received), and
* a trace for the sparkline: per bucket of ``bucket_ms`` of event time, the newest
  reading in it, over the last ``points`` buckets up to the newest reading (six hours
  of 5-minute points by default). A late reading (a store-and-forward backlog) fills
  in its bucket when that bucket is still in the span.

Every sensor has its trace, not only the alerting ones: the sparkline of an alert then
shows the rise that led to it. The trace is a ring of ``points`` slots indexed by bucket
(a bucket takes the slot of the one ``points`` buckets older), two small NumPy arrays
per sensor: memory is bounded by the registry's sensors, ~1.2 kB each by default.

On a Kafka worker the board sees the partitions that worker evaluates only.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.contracts.batch import TelemetryBatch

__all__ = ["LastReading", "StationBoard"]

#: An empty slot's time: older than any reading.
_EMPTY = np.iinfo(np.int64).min


class LastReading:
    """A sensor's newest reading: ``ts`` (epoch ms, event time), ``value`` in the
    metric's unit, ``quality`` the batch's flag (``engine.contracts.batch.Quality``);
    and its trace's ring (``trace`` reads it)."""

    __slots__ = ("quality", "ring_ts", "ring_value", "ts", "value")

    def __init__(self, points: int) -> None:
        self.ts = int(_EMPTY)
        self.value = float("nan")
        self.quality = 0
        self.ring_ts: npt.NDArray[np.int64] = np.full(points, _EMPTY, dtype=np.int64)
        self.ring_value: npt.NDArray[np.float64] = np.full(points, np.nan)

    def trace(self, bucket_ms: int) -> list[tuple[int, float]]:
        """``(ts, value)`` of the newest reading of each bucket of the span, oldest first."""
        points = len(self.ring_ts)
        first = self.ts // bucket_ms - points + 1  # the span's oldest bucket
        kept = (self.ring_ts != _EMPTY) & (self.ring_ts // bucket_ms >= first)
        order = np.argsort(self.ring_ts[kept], kind="stable")
        return list(
            zip(
                self.ring_ts[kept][order].tolist(),
                self.ring_value[kept][order].tolist(),
                strict=True,
            )
        )


class StationBoard:
    """Last reading and trace per (station, metric); see the module docstring."""

    def __init__(self, bucket_ms: int = 300_000, points: int = 72) -> None:
        self.bucket_ms = bucket_ms
        self.points = points
        #: Station -> metric -> its newest reading.
        self.stations: dict[str, dict[str, LastReading]] = {}

    def observe(self, batch: TelemetryBatch) -> None:
        """Take ``batch``'s readings (a tick has none): per sensor and bucket of event
        time only the newest, so the Python work is one step per sensor and bucket the
        batch touches, not per reading."""
        if len(batch) == 0:
            return
        key = batch.station_idx.astype(np.int64) * len(batch.metrics) + batch.metric_idx
        bucket = batch.ts // self.bucket_ms
        # By sensor, bucket, event time (stable): a group's last row is its newest.
        order = np.lexsort((batch.ts, bucket, key))
        k, b = key[order], bucket[order]
        last = order[np.r_[(k[1:] != k[:-1]) | (b[1:] != b[:-1]), True]]
        for s, m, t, v, q in zip(
            batch.station_idx[last].tolist(),
            batch.metric_idx[last].tolist(),
            batch.ts[last].tolist(),
            batch.value[last].tolist(),
            batch.quality[last].tolist(),
            strict=True,
        ):
            self._take(batch.stations[s], batch.metrics[m], t, v, q)

    def _take(self, station: str, metric: str, ts: int, value: float, quality: int) -> None:
        metrics = self.stations.setdefault(station, {})
        reading = metrics.get(metric)
        if reading is None:
            reading = metrics[metric] = LastReading(self.points)
        if ts >= reading.ts:
            reading.ts, reading.value, reading.quality = ts, value, quality
        bucket = ts // self.bucket_ms
        slot = bucket % self.points
        # Newer than what the slot holds: the same bucket's older reading, or an older
        # bucket's (one ``points`` buckets back, out of the span now), or nothing.
        if ts >= reading.ring_ts[slot]:
            reading.ring_ts[slot] = ts
            reading.ring_value[slot] = value

    def of(self, station: str) -> dict[str, LastReading]:
        """The station's sensors by metric (empty: nothing seen yet)."""
        return self.stations.get(station, {})

"""The duty room's station board: each sensor's last reading and a short trace of it.

``StationBoard.observe`` is called with every telemetry batch the topology evaluates
(``Topology.batch_listeners``, on the event loop, after the kernels): per sensor
(station, metric) it keeps the newest reading by event time and a ring of one point per
``bucket_ms`` of event time, the newest reading of each bucket, ``points`` buckets long
(six hours of 5-minute points by default). Every sensor has its ring, not only the
alerting ones: the sparkline of an alert then shows the rise that led to it. Memory is
bounded by the registry: at most ``points`` pairs per sensor.

Within a batch the readings count in event-time order. A late reading (older than the
sensor's newest) changes neither the last reading nor the ring: the trace is a glance,
the log keeps the record.

On a Kafka worker the board sees the partitions that worker evaluates only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from engine.contracts.batch import TelemetryBatch

__all__ = ["LastReading", "StationBoard"]


@dataclass
class LastReading:
    """A sensor's newest reading: ``ts`` (epoch ms, event time), ``value`` in the
    metric's unit, ``quality`` the batch's flag (``engine.contracts.batch.Quality``),
    ``trace`` the ring of ``(ts, value)``, each the newest reading of its bucket."""

    ts: int
    value: float
    quality: int
    trace: deque[tuple[int, float]] = field(default_factory=deque)


class StationBoard:
    """Last reading and trace per (station, metric); see the module docstring."""

    def __init__(self, bucket_ms: int = 300_000, points: int = 72) -> None:
        self.bucket_ms = bucket_ms
        self.points = points
        #: Station -> metric -> its newest reading.
        self.stations: dict[str, dict[str, LastReading]] = {}

    def observe(self, batch: TelemetryBatch) -> None:
        """Take ``batch``'s readings (a tick has none): per sensor and bucket of event
        time only the newest, in bucket order, so the Python work is one step per sensor
        and bucket the batch touches, not per reading."""
        if len(batch) == 0:
            return
        key = batch.station_idx.astype(np.int64) * len(batch.metrics) + batch.metric_idx
        bucket = batch.ts - batch.ts % self.bucket_ms
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
            reading = metrics[metric] = LastReading(ts, value, quality, deque(maxlen=self.points))
        elif ts < reading.ts:
            return  # late: the trace's newest point is already past it
        reading.ts, reading.value, reading.quality = ts, value, quality
        trace = reading.trace
        if trace and trace[-1][0] // self.bucket_ms == ts // self.bucket_ms:
            trace[-1] = (ts, value)  # the bucket's newest reading
        else:
            trace.append((ts, value))

    def of(self, station: str) -> dict[str, LastReading]:
        """The station's sensors by metric (empty: nothing seen yet)."""
        return self.stations.get(station, {})

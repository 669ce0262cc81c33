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

After a restart the board is rebuilt from the telemetry log (``StationBoard.read_back``,
before the topology starts): the records the gateway had committed, appended within the
last ``span_ms + RESTORE_SLACK_MS`` of wall time, in offset order; the topology's replay
of the uncommitted rest then feeds it as it fed the board before. A sensor whose span's
readings were all appended in that time is shown as before the restart: with event
times not after append times, every sensor whose newest reading's event time is within
``RESTORE_SLACK_MS`` of the restart (an hourly rain gauge's). One silent longer gets
back what of its span the read-back holds: nothing when it reported nothing in that
time (its silence alert, kept by the dispatcher, is still on the page).

Why read back rather than store the board: the log is the source of truth and already
on disk. At 10,000 stations reporting every 5 minutes the read-back is 0.84 M readings
in 28,000 records, about 2 s of one core once per start (pages of records merged: NumPy
per reading, Python per sensor and bucket); a stored board (~1.2 kB a sensor, 12 MB)
would be a second copy to write at every commit (or a store of its own that tracks what
changed), all the time.

``version`` counts the batches with readings the board took; ``changed_since`` waits for
it to move (the page's live stream, ``engine.runtime.dispatch.console``).

On a Kafka worker the board sees the partitions that worker evaluates only; it reads
them back when they are assigned to it (``board_kafka.py``), alongside their processing,
into a board of its own that it then merges in as the earlier readings
(``take_earlier``); ``changed`` lists the stations changed since a version, for the
owner of the dispatcher that merges every worker's board (``board_cluster.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from engine.contracts.batch import BatchDecodeError, TelemetryBatch
from engine.runtime.transport.log import DurableLog

__all__ = ["RESTORE_SLACK_MS", "LastReading", "StationBoard", "read_back", "readings_of"]

#: An empty slot's time: older than any reading.
_EMPTY = np.iinfo(np.int64).min
#: Wall time read back at a restart beyond the trace's span (ms): a sensor that reported
#: within it before the restart gets its whole trace back (an hourly rain gauge's).
RESTORE_SLACK_MS = 3_600_000
#: Telemetry records merged into one batch when read back: the board's Python work is
#: then per sensor and bucket of the page, not per record (records are small batches).
READ_BACK_PAGE = 1000


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
        #: Batches with readings taken so far.
        self.version = 0
        #: Station -> the ``version`` that last changed it (``changed``).
        self.touched: dict[str, int] = {}
        self._changed = asyncio.Event()

    @property
    def span_ms(self) -> int:
        """A trace's length in event time (ms): six hours by default."""
        return self.bucket_ms * self.points

    def read_back_from(self, now_ms: int) -> int:
        """The oldest append time (epoch ms) read back at a restart at wall time ``now_ms``:
        the trace's span and ``RESTORE_SLACK_MS`` before it."""
        return now_ms - self.span_ms - RESTORE_SLACK_MS

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
        self._moved(batch.stations[s] for s in np.unique(batch.station_idx[last]).tolist())

    def take_earlier(self, earlier: StationBoard) -> None:
        """Take what ``earlier`` (same ``bucket_ms`` and ``points``) was fed: readings all
        received before every one this board took (a read-back that ran alongside the
        live feed). The board is then the one fed ``earlier``'s readings first and its
        own after: per sensor the newest reading and, per trace slot, the newest of the
        slot's, of equal times this board's (the later received)."""
        assert (earlier.bucket_ms, earlier.points) == (self.bucket_ms, self.points)
        if not earlier.stations:
            return
        for station, metrics in earlier.stations.items():
            mine = self.stations.setdefault(station, {})
            for metric, old in metrics.items():
                new = mine.get(metric)
                if new is None:
                    mine[metric] = old  # ``earlier`` is not used after: no copy
                    continue
                if old.ts > new.ts:
                    new.ts, new.value, new.quality = old.ts, old.value, old.quality
                newer = old.ring_ts > new.ring_ts
                new.ring_ts[newer] = old.ring_ts[newer]
                new.ring_value[newer] = old.ring_value[newer]
        self._moved(earlier.stations)

    def _moved(self, stations: Iterable[str]) -> None:
        """The board took readings of ``stations``: a new version, and its waiters woken."""
        self.version += 1
        for station in stations:
            self.touched[station] = self.version
        self._changed.set()
        self._changed = asyncio.Event()

    def changed(self, version: int) -> list[str]:
        """The stations whose readings changed after ``version`` (all for 0): one pass
        over the stations, no reading copied (a peer's poll, ``board_cluster``)."""
        return [s for s, v in self.touched.items() if v > version]

    def stale(self, station: str) -> bool:
        """Whether ``station``'s readings may be out of date: never on this process's own
        board (a merged one, ``board_cluster.ClusterBoard``, says so of a silent peer's)."""
        return False

    async def changed_since(self, version: int, timeout_s: float) -> int:
        """``version`` once it differs from the one given (or after ``timeout_s``
        seconds, whichever is first)."""
        if self.version == version:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self.version

    def read_back(self, log: DurableLog, topic: str, group: str, now_ms: int) -> int:
        """Take what ``group`` committed of telemetry ``topic`` appended since ``now_ms -
        span_ms - RESTORE_SLACK_MS`` (epoch ms, wall time); see the module docstring.
        Call before the topology consumes (it replays from the committed offsets on).
        Returns the number of readings taken."""
        taken = 0
        for batch in read_back(log, topic, group, self.read_back_from(now_ms)):
            self.observe(batch)
            taken += len(batch)
        return taken

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


def read_back(
    log: DurableLog, topic: str, group: str, since_ms: int, page: int = READ_BACK_PAGE
) -> Iterator[TelemetryBatch]:
    """The telemetry of ``topic`` that ``group`` has committed, from the first record
    appended at ``since_ms`` (epoch ms) or later: per partition, in offset order, the
    readings of each ``page`` records merged into one batch (``readings_of``)."""
    for partition in range(log.partitions(topic) or 0):
        end = log.committed(group, topic, partition)
        if end is None:  # never committed: the topology replays all of it
            continue
        offset = log.first_offset_since(topic, partition, since_ms)
        while offset < end:
            records = log.read(topic, partition, offset, min(page, end - offset))
            if not records:
                break
            offset = records[-1].offset + 1
            merged = readings_of(r.value for r in records if r.offset < end)
            if len(merged):
                yield merged


def readings_of(values: Iterable[bytes | None]) -> TelemetryBatch:
    """The readings of telemetry records (their values, in offset order) as one batch,
    in their order: a page of a read-back, from the embedded log or from Kafka. Records
    that do not decode are left out (live, they went to the dead letters and never
    reached the board)."""
    batches = []
    for value in values:
        with contextlib.suppress(BatchDecodeError):
            batches.append(TelemetryBatch.decode(value or b""))
    return _merge(batches)


def _merge(batches: list[TelemetryBatch]) -> TelemetryBatch:
    """One batch of ``batches``' readings in their order (names interned anew)."""
    if not batches:
        return TelemetryBatch.from_rows([])
    stations: dict[str, int] = {}
    metrics: dict[str, int] = {}
    station_idx, metric_idx = [], []
    for b in batches:
        s = np.asarray([stations.setdefault(x, len(stations)) for x in b.stations], np.uint32)
        m = np.asarray([metrics.setdefault(x, len(metrics)) for x in b.metrics], np.uint16)
        station_idx.append(s[b.station_idx])
        metric_idx.append(m[b.metric_idx])
    return TelemetryBatch(
        stations=tuple(stations),
        metrics=tuple(metrics),
        station_idx=np.concatenate(station_idx),
        metric_idx=np.concatenate(metric_idx),
        ts=np.concatenate([b.ts for b in batches]),
        value=np.concatenate([b.value for b in batches]),
        quality=np.concatenate([b.quality for b in batches]),
    )

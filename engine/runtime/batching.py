"""Readings -> one columnar telemetry batch per partition, without Python work per reading.

Every ingest path hands its readings to ``Topology.produce`` (``TelemetryProducer.produce``
on ``vigil ingest``): ``ReadingBlock`` s (a sensor's readings as two columns: MQTT, the
field servers) or a tuple per reading (NB-IoT). Blocks' columns are chained straight
into arrays (``np.fromiter``: no list of every reading), or joined when every column
carries its NumPy twin as ``array`` (``connectors.ingest.Times`` and ``Values``, what
MQTT's usual payload decodes to: no Python number touched here); tuples are transposed
by ``zip``, names are interned by dicts fed through ``map`` and the rows are grouped by partition
with NumPy, so that the Python steps are per block, per station (its murmur2 partition)
and per partition, never per reading: murmur2 and a ``BatchBuilder.add`` per reading
were a third of MQTT ingest's CPU at 100 readings a message (issue 16).

The batches are exactly those a ``BatchBuilder`` per partition, fed the readings one by
one, builds (the same bytes: station and metric names in the order first seen in the
partition, readings in the order given); ``tests/unit/test_batching.py`` checks it
against that reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain, repeat
from operator import attrgetter
from typing import NamedTuple, cast

import numpy as np
import numpy.typing as npt
from aiokafka.partitioner import DefaultPartitioner

from engine.contracts.batch import Quality, ReadingBlock, TelemetryBatch

__all__ = [
    "PARTITION_CACHE_MAX",
    "Reading",
    "StationPartitions",
    "batches_by_partition",
    "murmur2_partition",
]

#: station, metric, ts_ms, value[, quality (engine.contracts.batch.Quality)]
Reading = tuple[str, str, int, float] | tuple[str, str, int, float, int]

_partitioner = DefaultPartitioner()

Ints = npt.NDArray[np.int64]

_TS, _VALUE = attrgetter("ts"), attrgetter("value")
_NONE = type(None)


def murmur2_partition(key: str, partitions: list[int]) -> int:
    """Kafka's murmur2 partition of ``key`` among ``partitions`` (``[0, 1, ..., n-1]``)."""
    return int(_partitioner(key.encode(), partitions, partitions))


#: How many stations' partitions ``StationPartitions`` keeps (a registry is far smaller;
#: the bound is for ids that keep changing, e.g. from a misconfigured device).
PARTITION_CACHE_MAX = 100_000


class StationPartitions:
    """Station id -> its murmur2 partition among ``partitions``, the same on both
    transports; computed once per station (murmur2 in Python per reading was a third of
    ingest's CPU), in a cache that starts over past ``PARTITION_CACHE_MAX`` stations."""

    def __init__(self, partitions: int) -> None:
        self._every = list(range(partitions))
        self._of: dict[str, int] = {}

    def __call__(self, station: str) -> int:
        p = self._of.get(station)
        if p is None:
            if len(self._of) >= PARTITION_CACHE_MAX:
                self._of.clear()
            p = self._of[station] = murmur2_partition(station, self._every)
        return p


class _Columns(NamedTuple):
    """Readings as columns: a segment is a block or a single reading."""

    station: Sequence[str]  # per segment
    metric: Sequence[str]  # per segment
    length: list[int] | None  # readings per segment; None: one each
    ts: Sequence[int] | Ints  # per reading, ms
    value: Sequence[float] | npt.NDArray[np.float64]  # per reading
    quality: Sequence[int] | None  # per reading; None: all UNCHECKED


def batches_by_partition(
    readings: Sequence[Reading | ReadingBlock], partition_of: Callable[[str], int]
) -> dict[int, TelemetryBatch]:
    """One batch per partition (``partition_of(station)``, called once per station), in
    the order the partitions first appear; raises what ``BatchBuilder.build`` raises on
    a value NumPy cannot take (a ts past int64)."""
    if not readings:
        return {}
    cols = _columns(readings)
    stations = list(dict.fromkeys(cols.station))  # first seen first, as BatchBuilder
    metrics = list(dict.fromkeys(cols.metric))
    seg_station = _codes(cols.station, stations)
    seg_metric = _codes(cols.metric, metrics)
    station_part = np.fromiter(map(partition_of, stations), np.int64, len(stations))
    seg_part = station_part[seg_station]
    if cols.length is None:
        row_station, row_metric, row_part = seg_station, seg_metric, seg_part
    else:
        length = np.asarray(cols.length, np.int64)
        row_station, row_metric = np.repeat(seg_station, length), np.repeat(seg_metric, length)
        row_part = station_part[row_station]
    ts = np.asarray(cols.ts, np.int64)
    value = np.asarray(cols.value, np.float64)
    n = len(ts)
    if cols.quality is None:
        quality = np.full(n, int(Quality.UNCHECKED), np.uint8)
    else:
        quality = np.asarray(cols.quality, np.uint8)
    # Rows (and segments) grouped by partition, in their order within each.
    row_order = np.argsort(row_part, kind="stable")
    row_bounds = _bounds(row_part[row_order])
    seg_order = np.argsort(seg_part, kind="stable")
    seg_bounds = _bounds(seg_part[seg_order])
    local_station = np.empty(len(stations), np.int64)
    local_metric = np.empty(len(metrics), np.int64)
    batches = {}
    for p in dict.fromkeys(station_part.tolist()):  # partitions in first-seen order
        # A partition's stations keep their global first-seen order (all a station's
        # segments are in its partition); its metrics, their first segment in it.
        mine = np.flatnonzero(station_part == p)
        local_station[mine] = np.arange(len(mine))
        lo, hi = seg_bounds[p]
        used = _first_seen(seg_metric[seg_order[lo:hi]])
        local_metric[used] = np.arange(len(used))
        lo, hi = row_bounds.get(p, (0, 0))  # (0, 0): only empty blocks
        rows = row_order[lo:hi]
        batches[p] = TelemetryBatch(
            stations=tuple(stations[i] for i in mine.tolist()),
            metrics=tuple(metrics[i] for i in used.tolist()),
            station_idx=local_station[row_station[rows]].astype(np.uint32),
            metric_idx=local_metric[row_metric[rows]].astype(np.uint16),
            ts=ts[rows],
            value=value[rows],
            quality=quality[rows],
        )
    return batches


def _columns(readings: Sequence[Reading | ReadingBlock]) -> _Columns:
    """The readings as columns: a C-level transpose for tuples of one width (the
    common case), else a step per block or reading (no connector mixes them)."""
    blocks = sum(map(isinstance, readings, repeat(ReadingBlock)))
    if blocks == len(readings):  # MQTT, the field servers: columns chained, no list
        lengths = list(map(len, readings))
        n = sum(lengths)
        ts_arrays = list(map(getattr, map(_TS, readings), repeat("array"), repeat(None)))
        value_arrays = list(map(getattr, map(_VALUE, readings), repeat("array"), repeat(None)))
        if _NONE not in map(type, chain(ts_arrays, value_arrays)):
            # Every column carries its array (``connectors.ingest.Times``, ``Values``:
            # MQTT's usual payload): joined, no Python number touched.
            ts = np.concatenate(cast(list[Ints], ts_arrays))
            value = np.concatenate(cast(list[npt.NDArray[np.float64]], value_arrays))
        else:
            ts = np.fromiter(chain.from_iterable(map(_TS, readings)), np.int64, n)
            value = np.fromiter(chain.from_iterable(map(_VALUE, readings)), np.float64, n)
        return _Columns(
            [b.station for b in readings],  # type: ignore[union-attr]
            [b.metric for b in readings],  # type: ignore[union-attr]
            lengths,
            ts,
            value,
            None,
        )
    if not blocks:
        widths = set(map(len, readings))
        if widths == {4}:
            station, metric, ts, value = zip(*readings, strict=True)
            return _Columns(station, metric, None, ts, value, None)
        if widths == {5}:
            station, metric, ts, value, quality = zip(*readings, strict=True)
            return _Columns(station, metric, None, ts, value, quality)
    stations, metrics, lengths = [], [], []
    ts_col: list[int] = []
    value_col: list[float] = []
    quality_col: list[int] = []
    for r in readings:
        if isinstance(r, ReadingBlock):
            k = len(r.ts)
            stations.append(r.station)
            metrics.append(r.metric)
            lengths.append(k)
            ts_col.extend(r.ts)
            value_col.extend(r.value)
            quality_col.extend(repeat(int(Quality.UNCHECKED), k))
        else:
            stations.append(r[0])
            metrics.append(r[1])
            lengths.append(1)
            ts_col.append(r[2])
            value_col.append(r[3])
            quality_col.append(r[4] if len(r) > 4 else int(Quality.UNCHECKED))
    return _Columns(stations, metrics, lengths, ts_col, value_col, quality_col)


def _codes(names: Sequence[str], distinct: list[str]) -> Ints:
    """Each name's index in ``distinct``, through a dict driven by ``map``."""
    code = dict(zip(distinct, range(len(distinct)), strict=True))
    return np.fromiter(map(code.__getitem__, names), np.int64, len(names))


def _bounds(grouped: Ints) -> dict[int, tuple[int, int]]:
    """Value -> (start, end) of its run in ``grouped`` (sorted)."""
    values, starts, counts = np.unique(grouped, return_index=True, return_counts=True)
    return {
        v: (s, s + c)
        for v, s, c in zip(values.tolist(), starts.tolist(), counts.tolist(), strict=True)
    }


def _first_seen(codes: Ints) -> Ints:
    """The distinct ``codes`` in the order of their first occurrence."""
    values, first = np.unique(codes, return_index=True)
    return values[np.argsort(first)]

"""Readings of several ingest workers merged in time order: what the pool
(``connectors.mqtt.pool``) does with the backlogs its workers' sessions held, and with
their live batches.

Live: a worker's batch waits as a ``Held``, which ``take`` s its readings received up to
a time; ``merged`` makes the parts taken one block per sensor, in time order when more
than one worker's readings are in it (NumPy stable sorts, no Python step per reading).

Backlog: a worker's batch is kept as ``Columns``: per sensor, its times (epoch ms) sorted and the
values in the same order. ``take`` cuts off what is not newer than a time; ``blocks``
merges such cuts into one block per sensor, in time order. Sorts are stable: readings
of one time keep the order they came in (a repeat stays a repeat)."""

from __future__ import annotations

import bisect
from itertools import chain

import numpy as np
import numpy.typing as npt

from engine.contracts.batch import ReadingBlock

__all__ = ["Columns", "Held", "Rows", "Sensors", "blocks", "columns", "merged", "newest", "take"]

#: Per (station, metric): times (epoch ms, ascending) and values.
Columns = dict[tuple[str, str], tuple[list[int], list[float]]]


def _sorted(ts: list[int], values: list[float]) -> tuple[list[int], list[float]]:
    t = np.asarray(ts, np.int64)
    order = np.argsort(t, kind="stable")
    return t[order].tolist(), np.asarray(values, np.float64)[order].tolist()


def columns(readings: list[ReadingBlock]) -> Columns:
    """``readings`` as ``Columns``."""
    sensors: Columns = {}
    for b in readings:
        ts, values = sensors.setdefault((b.station, b.metric), ([], []))
        ts.extend(b.ts)
        values.extend(b.value)
    return {sensor: _sorted(*c) for sensor, c in sensors.items() if c[0]}


def newest(cols: Columns) -> int:
    """The newest time in ``cols`` (not empty)."""
    return max(ts[-1] for ts, _ in cols.values())


def take(cols: Columns, upto: int) -> Columns:
    """Remove from ``cols`` (in place) and return its readings not newer than ``upto``."""
    taken: Columns = {}
    for sensor, (ts, values) in list(cols.items()):
        n = bisect.bisect_right(ts, upto)
        if n:
            taken[sensor] = (ts[:n], values[:n])
            if n == len(ts):
                del cols[sensor]
            else:
                cols[sensor] = (ts[n:], values[n:])
    return taken


def blocks(parts: list[Columns]) -> list[ReadingBlock]:
    """``parts`` merged: one block per sensor, its readings in time order (a tie: in
    the order of ``parts``)."""
    merged: Columns = {}
    for cols in parts:
        for sensor, (ts, values) in cols.items():
            mts, mvalues = merged.setdefault(sensor, ([], []))
            mts.extend(ts)
            mvalues.extend(values)
    return [ReadingBlock(s, m, *_sorted(ts, values)) for (s, m), (ts, values) in merged.items()]


#: A worker's batch as it sends it (``connectors.mqtt.worker``): per sensor, station,
#: metric, times, values, and per message in the order received its receive time
#: (epoch ms) and its number of readings.
Sensors = list[tuple[str, str, list[int], list[float], list[int], list[int]]]


class Rows:
    """Readings as flat columns: ``sensor`` indexes ``names``, rows of a sensor
    together, in the order they came."""

    def __init__(
        self,
        names: list[tuple[str, str]],
        sensor: npt.NDArray[np.int64],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
    ) -> None:
        self.names, self.sensor, self.ts, self.value = names, sensor, ts, value


class Held:
    """A worker's live batch while it waits in the pool (``MqttIngestPool._merge``):
    ``take`` hands out its readings received up to a time, the rest stays.
    ``newest``: the latest receive time in it (epoch ms)."""

    def __init__(self, sensors: Sensors) -> None:
        self._sensors: Sensors | None = sensors  # whole, as sent
        self.newest = max(max(s[4]) for s in sensors)
        self._rows: Rows | None = None
        self._received: npt.NDArray[np.int64] | None = None  # per row of ``_rows``

    @property
    def empty(self) -> bool:
        return self._sensors is None and (self._rows is None or not len(self._rows.ts))

    def take(self, upto: int | None) -> Sensors | Rows | None:
        """Remove and return the readings received at or before ``upto`` (epoch ms;
        None: all): the batch as sent when that is all of it, else its rows (each
        sensor's in the order they came); None if there are none."""
        if self._sensors is not None and (upto is None or upto >= self.newest):
            whole, self._sensors = self._sensors, None
            return whole
        rows, received = self._flat()
        if not len(received):
            return None
        keep = np.zeros(len(received), bool) if upto is None else received > upto
        if keep.all():
            return None
        go = ~keep
        taken = Rows(rows.names, rows.sensor[go], rows.ts[go], rows.value[go])
        self._rows = Rows(rows.names, rows.sensor[keep], rows.ts[keep], rows.value[keep])
        self._received = received[keep]
        return taken

    def _flat(self) -> tuple[Rows, npt.NDArray[np.int64]]:
        """The batch as rows (built once, on its first partial ``take``)."""
        if self._sensors is not None:
            s = self._sensors
            self._sensors = None
            lengths = [len(x[2]) for x in s]
            n = sum(lengths)
            self._rows = Rows(
                [(x[0], x[1]) for x in s],
                np.repeat(np.arange(len(s), dtype=np.int64), lengths),
                np.fromiter(chain.from_iterable(x[2] for x in s), np.int64, n),
                np.fromiter(chain.from_iterable(x[3] for x in s), np.float64, n),
            )
            stamps = np.fromiter(chain.from_iterable(x[4] for x in s), np.int64)
            counts = np.fromiter(chain.from_iterable(x[5] for x in s), np.int64)
            self._received = np.repeat(stamps, counts)
        assert self._rows is not None and self._received is not None
        return self._rows, self._received


def merged(parts: list[Sensors | Rows]) -> list[ReadingBlock]:
    """``Held.take`` 's parts as one block per sensor. Several parts (workers): each
    sensor's readings in time order, ties in the order of ``parts`` (stable sorts,
    vectorised). One part: each sensor's in the order they came."""
    if len(parts) == 1 and not isinstance(parts[0], Rows):
        return [ReadingBlock(x[0], x[1], x[2], x[3]) for x in parts[0]]
    rows = [p if isinstance(p, Rows) else Held(p)._flat()[0] for p in parts]
    names: dict[tuple[str, str], int] = {}
    sensor = np.concatenate(
        [
            np.fromiter((names.setdefault(n, len(names)) for n in r.names), np.int64)[r.sensor]
            for r in rows
        ]
    )
    ts = np.concatenate([r.ts for r in rows])
    value = np.concatenate([r.value for r in rows])
    if len(rows) > 1:
        order = np.argsort(ts, kind="stable")  # time order ...
        order = order[np.argsort(sensor[order], kind="stable")]  # ... within each sensor
        sensor, ts, value = sensor[order], ts[order], value[order]
    starts = np.flatnonzero(np.diff(sensor)) + 1
    bounds = zip([0, *starts.tolist()], [*starts.tolist(), len(sensor)], strict=True)
    keys = list(names)
    return [
        ReadingBlock(*keys[int(sensor[lo])], ts[lo:hi].tolist(), value[lo:hi].tolist())
        for lo, hi in bounds
        if hi > lo
    ]

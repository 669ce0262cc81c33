"""Readings of several ingest workers merged in time order: what the pool
(``connectors.mqtt.pool``) does with the backlogs its workers' sessions held.

A worker's batch is kept as ``Columns``: per sensor, its times (epoch ms) sorted and the
values in the same order. ``take`` cuts off what is not newer than a time; ``blocks``
merges such cuts into one block per sensor, in time order. Sorts are stable: readings
of one time keep the order they came in (a repeat stays a repeat)."""

from __future__ import annotations

import bisect

from engine.contracts.batch import ReadingBlock

__all__ = ["Columns", "blocks", "columns", "newest", "take"]

#: Per (station, metric): times (epoch ms, ascending) and values.
Columns = dict[tuple[str, str], tuple[list[int], list[float]]]


def _sorted(ts: list[int], values: list[float]) -> tuple[list[int], list[float]]:
    order = sorted(range(len(ts)), key=ts.__getitem__)
    return [ts[i] for i in order], [values[i] for i in order]


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

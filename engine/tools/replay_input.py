"""Readings for ``vigil replay``: CSV rows streamed from a file or standard input, and
given back in event-time order in bounded memory.

Contract:

- ``read_csv(lines, name, into, skipped, ...)`` parses CSV text (any iterable of lines:
  a file, ``sys.stdin``) into ``into``. Long format ``station,metric,ts,value``
  (``timestamp`` for ``ts``); a single series (no station or metric column) needs
  ``station``/``metric``; ``wide``: one row per time, every numeric cell a reading of
  the column's metric (``metric_name``). ``ts`` is ISO 8601 or epoch ms; a time without
  an offset takes ``tz``. A row that cannot be read is counted in ``skipped`` with its
  reason and, for the first few, its line; it never stops the replay. A header that
  cannot be read raises ValueError (``file:1: ...``).
- ``SortedReadings`` takes readings in any order and gives them back stably sorted by
  event time (``batches``), as often as asked. Up to ``run_rows`` readings are held in
  memory (22 bytes each); past that, sorted runs are written to a temporary folder and
  merged block by block, so memory does not grow with the input (about 2 × run_rows
  readings plus a block per run). ``close()`` removes the folder.
"""

from __future__ import annotations

import csv
import math
import shutil
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from engine.contracts.batch import TelemetryBatch
from rules.times import NaiveTime, to_ms

__all__ = [
    "Progress",
    "Reading",
    "Skipped",
    "SortedReadings",
    "counted_lines",
    "metric_name",
    "read_csv",
]

Reading = tuple[str, str, int, float]
ROW = np.dtype([("ts", "<i8"), ("value", "<f8"), ("station", "<u4"), ("metric", "<u2")])
RUN_ROWS = 2_000_000  # readings sorted in memory before a run is written out
MERGE_BLOCK = 65_536  # readings read from each run at a time while merging
EXAMPLES = 5  # skipped rows shown per reason


@dataclass
class Skipped:
    """Rows that could not be read: how many per reason, and the first few of each."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str, detail: str) -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES:
            shown.append(f"{where}: {detail}")

    def __len__(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        """``N rows skipped: reason`` per reason, most frequent first, then its examples."""
        out = []
        for reason, n in self.counts.most_common():
            out.append(f"{n} row{'s' if n != 1 else ''} skipped: {reason}")
            out += [f"  {example}" for example in self.examples[reason]]
            if n > EXAMPLES:
                out.append(f"  ... and {n - EXAMPLES} more")
        return out


def metric_name(column: str) -> str:
    """A wide CSV's column as a metric: ``PM2.5_24h`` -> ``pm2_5_24h``."""
    return column.strip().lower().replace(".", "_").replace(" ", "_")


class _Times:
    """``to_ms`` with a cache: a long CSV repeats each time once per station and metric."""

    def __init__(self, tz: tzinfo | None) -> None:
        self.tz = tz
        self.cache: dict[str, int] = {}

    def __call__(self, raw: str) -> int:
        got = self.cache.get(raw)
        if got is None:
            if len(self.cache) > 65_536:
                self.cache.clear()
            got = self.cache[raw] = to_ms(raw, self.tz)
        return got


def _time_reason(exc: ValueError) -> str:
    if isinstance(exc, NaiveTime):
        return "time without a UTC offset (give --tz, e.g. --tz Asia/Shanghai or --tz=-05:00)"
    return "unreadable time"


def read_csv(
    lines: Iterable[str],
    name: str,
    into: SortedReadings,
    skipped: Skipped,
    *,
    station: str | None = None,
    metric: str | None = None,
    wide: bool = False,
    tz: tzinfo | None = None,
) -> None:
    """Parse CSV ``lines`` (named ``name`` in messages) into ``into``; see the module."""
    reader = csv.reader(lines)
    header = [h.strip() for h in next(reader, [])]
    col = {h: i for i, h in enumerate(header)}
    ts_col = col.get("ts", col.get("timestamp"))
    times = _Times(tz)
    if wide:
        if ts_col is None or (station is None and "station" not in col):
            raise ValueError(f"{name}:1: a wide CSV needs a timestamp and a station column")
        _read_wide(reader, name, into, skipped, times, ts_col, station, header)
        return
    missing = [] if ts_col is not None else ["ts (or timestamp)"]
    missing += [] if "value" in col else ["value"]
    if station is None and "station" not in col:
        missing.append("station (or --station)")
    if metric is None and "metric" not in col:
        missing.append("metric (or --metric)")
    if missing or ts_col is None:
        raise ValueError(f"{name}:1: missing column(s): {', '.join(missing)}")
    vi, si, mi = col["value"], col.get("station"), col.get("metric")
    width = 1 + max(i for i in (ts_col, vi, si, mi) if i is not None)
    add = into.add
    for row in reader:
        if len(row) < width:
            if any(cell.strip() for cell in row):
                skipped.add("too few columns", f"{name}:{reader.line_num}", repr(",".join(row)))
            continue
        try:
            value = float(row[vi])
        except ValueError:
            skipped.add("value not a number", f"{name}:{reader.line_num}", repr(row[vi]))
            continue
        if not math.isfinite(value):
            skipped.add("value not finite", f"{name}:{reader.line_num}", repr(row[vi]))
            continue
        try:
            ts = times(row[ts_col])
        except ValueError as exc:
            skipped.add(_time_reason(exc), f"{name}:{reader.line_num}", str(exc))
            continue
        add(station or row[si], metric or row[mi], ts, value)  # type: ignore[index]


def _read_wide(
    reader: Any,
    name: str,
    into: SortedReadings,
    skipped: Skipped,
    times: _Times,
    ts_col: int,
    station: str | None,
    header: list[str],
) -> None:
    si = header.index("station") if "station" in header else None
    value_cols = [(i, metric_name(h)) for i, h in enumerate(header) if i not in (ts_col, si)]
    for row in reader:
        line = reader.line_num
        try:
            ts = times(row[ts_col])
        except (ValueError, IndexError) as exc:
            reason = _time_reason(exc) if isinstance(exc, ValueError) else "too few columns"
            skipped.add(reason, f"{name}:{line}", str(exc))
            continue
        where = station or row[si]
        for i, metric in value_cols:
            try:
                value = float(row[i])
            except (ValueError, IndexError):
                continue  # empty cells and text columns (units, file names) are not data
            if math.isfinite(value):
                into.add(where, metric, ts, value)


class SortedReadings:
    """Readings in, the same readings out in stable event-time order; see the module."""

    def __init__(self, run_rows: int = RUN_ROWS) -> None:
        self.run_rows = run_rows
        self.stations: list[str] = []
        self.metrics: list[str] = []
        self._station_ids: dict[str, int] = {}
        self._metric_ids: dict[str, int] = {}
        self._cols = (array("q"), array("d"), array("I"), array("H"))
        self._runs: list[npt.NDArray[np.void]] = []  # in memory: at most one
        self._files: list[tuple[Path, int]] = []  # spilled runs: (file, rows)
        self._dir: Path | None = None
        self._pairs: Counter[int] = Counter()  # station_id << 16 | metric_id -> readings
        self.count = 0

    @classmethod
    def of(cls, readings: Iterable[Reading]) -> SortedReadings:
        out = cls()
        for station, metric, ts, value in readings:
            out.add(station, metric, ts, value)
        return out

    def add(self, station: str, metric: str, ts: int, value: float) -> None:
        s = self._station_ids.get(station)
        if s is None:
            s = self._station_ids[station] = len(self.stations)
            self.stations.append(station)
        m = self._metric_ids.get(metric)
        if m is None:
            m = self._metric_ids[metric] = len(self.metrics)
            self.metrics.append(metric)
        cols = self._cols
        cols[0].append(ts)
        cols[1].append(value)
        cols[2].append(s)
        cols[3].append(m)
        if len(cols[0]) >= self.run_rows:
            self._end_run()

    def __len__(self) -> int:
        return self.count + len(self._cols[0])

    def pairs(self) -> Counter[tuple[str, str]]:
        """Readings per (station, metric)."""
        self._end_run()
        return Counter(
            {(self.stations[k >> 16], self.metrics[k & 0xFFFF]): n for k, n in self._pairs.items()}
        )

    def _end_run(self) -> None:
        """Sort what is buffered into a run; past the first run, every run goes to disk."""
        ts, value, station, metric = self._cols
        if not ts:
            return
        run = np.empty(len(ts), dtype=ROW)
        run["ts"], run["value"] = np.frombuffer(ts, np.int64), np.frombuffer(value, np.float64)
        run["station"], run["metric"] = np.frombuffer(station, np.uint32), metric
        keys, n = np.unique(
            run["station"].astype(np.int64) << 16 | run["metric"], return_counts=True
        )
        self._pairs.update(dict(zip(keys.tolist(), n.tolist(), strict=True)))
        run = run[np.argsort(run["ts"], kind="stable")]
        self.count += len(run)
        self._cols = (array("q"), array("d"), array("I"), array("H"))
        self._runs.append(run)
        if len(self._runs) > 1 or self._files:
            for held in self._runs:
                self._spill(held)
            self._runs = []

    def _spill(self, run: npt.NDArray[np.void]) -> None:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="vigil-replay-"))
        path = self._dir / f"run{len(self._files):05d}"
        run.tofile(path)
        self._files.append((path, len(run)))

    def batches(self, size: int) -> Iterator[TelemetryBatch]:
        """Every reading once, stably sorted by event time, in batches of <= ``size``."""
        self._end_run()
        for block in self._blocks():
            for start in range(0, len(block), size):
                yield self._batch(block[start : start + size])

    def _blocks(self) -> Iterator[npt.NDArray[np.void]]:
        if not self._files:
            yield from self._runs
            return
        yield from _merge([_RunReader(path, n) for path, n in self._files])

    def _batch(self, rows: npt.NDArray[np.void]) -> TelemetryBatch:
        s_ids, s_idx = np.unique(rows["station"], return_inverse=True)
        m_ids, m_idx = np.unique(rows["metric"], return_inverse=True)
        return TelemetryBatch(
            stations=tuple(self.stations[i] for i in s_ids.tolist()),
            metrics=tuple(self.metrics[i] for i in m_ids.tolist()),
            station_idx=s_idx.astype(np.uint32),
            metric_idx=m_idx.astype(np.uint16),
            ts=np.ascontiguousarray(rows["ts"]),
            value=np.ascontiguousarray(rows["value"]),
            quality=np.zeros(len(rows), dtype=np.uint8),
        )

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> SortedReadings:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _RunReader:
    """A sorted run on disk, read a block at a time."""

    def __init__(self, path: Path, rows: int) -> None:
        self.path, self.rows, self.pos = path, rows, 0

    @property
    def more(self) -> bool:
        return self.pos < self.rows

    def read(self) -> npt.NDArray[np.void]:
        count = min(MERGE_BLOCK, self.rows - self.pos)
        block = np.fromfile(self.path, dtype=ROW, count=count, offset=self.pos * ROW.itemsize)
        self.pos += count
        return block


def _merge(runs: Sequence[_RunReader]) -> Iterator[npt.NDArray[np.void]]:
    """The runs' readings in (ts, run, position) order: each run holds the readings of a
    stretch of the input in stable order, so this is the input's stable sort.

    A reading below ``bound`` (the least last time among the buffers of runs with more
    to read) cannot be preceded by any reading not yet read; those go out, the rest wait.
    """
    bufs = [run.read() for run in runs]
    while any(len(b) for b in bufs):
        open_ends = [int(b["ts"][-1]) for b, run in zip(bufs, runs, strict=True) if run.more]
        bound = min(open_ends) if open_ends else None
        taken = [b if bound is None else b[b["ts"] < bound] for b in bufs]
        out = np.concatenate(taken)
        if not len(out):  # every buffer starts at the bound: read further where it ends
            for i, run in enumerate(runs):
                if run.more and int(bufs[i]["ts"][-1]) == bound:
                    bufs[i] = np.concatenate([bufs[i], run.read()])
            continue
        yield out[np.argsort(out["ts"], kind="stable")]
        for i, run in enumerate(runs):
            bufs[i] = bufs[i][len(taken[i]) :]
            if not len(bufs[i]) and run.more:
                bufs[i] = run.read()


class Progress:
    """A one-line progress display on a terminal (``stream.isatty()``), else nothing:
    a log file or a pipe gets no carriage returns. Redrawn at most 4 times a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream if stream.isatty() else None
        self.total: int | None = None
        self.unit = self.label = ""
        self._shown = 0.0

    def start(self, label: str, total: int | None, unit: str) -> None:
        self.label, self.total, self.unit, self._shown = label, total, unit, 0.0

    def update(self, done: int, rows: int) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if now - self._shown < 0.25:
            return
        self._shown = now
        share = f" {100 * done / self.total:5.1f} %" if self.total else ""
        self.stream.write(f"\r{self.label}{share}  {rows:,} {self.unit}\x1b[K")
        self.stream.flush()

    def done(self) -> None:
        if self.stream is not None and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def counted_lines(lines: Iterable[str], progress: Progress, into: SortedReadings) -> Iterator[str]:
    """``lines`` as they are, showing the characters read so far on ``progress``."""
    read = 0
    for n, line in enumerate(lines):
        read += len(line)
        if not n & 0x3FFF:
            progress.update(read, len(into))
        yield line
    progress.done()

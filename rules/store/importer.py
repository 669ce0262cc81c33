"""``vigil registry import devices.csv``: devices from CSV into the store, row by row.

The file (UTF-8, a header row, one device per row; columns in any order)::

    identity,id_type,station,product,key,metrics,deleted
    861234567890123,imei,HZ001,waterlog-v1,00112233445566778899aabbccddeeff,water_depth:water_level,
    861234567890131,,HZ002,manhole-v1,,,
    861234567890149,,,,,,1

- ``identity`` (required): the IMEI, IMSI or platform device id, as ``id_type`` says
  (``imei`` when the column is absent or the cell empty).
- ``station``, ``product``: required unless the row removes the device; the station
  must be in the station registry, the product among the known products when they are
  known.
- ``key``: the per-device secret as hex, at least 16 bytes; empty: none.
- ``metrics``: ``field:metric;field:metric``, the product's fields renamed to the
  station's metrics; empty: the product's names are the metrics. Each metric named must
  be one the station reports, when the station registry lists its metrics (a reading
  of any other would be refused by the gateway, dead-lettered as ``unknown metric``).
- ``deleted``: ``1``/``true``/``yes`` removes the device; empty, ``0``, ``false``,
  ``no`` keep it.

Contract: every row is an upsert (or a removal) of its own, so an import can be run
again, and a running gateway may see one half-done. A row with a problem (a station the
station registry does not have, a metric the station does not report, ...) is refused:
skipped and reported as ``file:line:col: column: message`` (``col`` the CSV column,
1-based); the other rows are applied. Refused, not imported with a warning: a device
admitted to the store but not to its station would have every uplink dead-lettered.
Memory stays bounded whatever the file's length: rows go to the store in batches, and a
duplicate identity in the file is found by asking the store which import and line last
wrote it.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from rocksdict import Rdict, WriteBatch

from rules.errors import Problem, did_you_mean
from rules.store.db import (
    DEVICE,
    REMOVAL,
    device_record,
    fast_writes,
    open_writer,
    read_meta,
    remove_keys,
    write_meta,
)
from rules.store.identity import ID_TYPES, identity_problem

__all__ = ["COLUMNS", "ImportReport", "import_devices", "remove_devices"]

COLUMNS = ("identity", "id_type", "station", "product", "key", "metrics", "deleted")
_TRUE, _FALSE = frozenset({"1", "true", "yes"}), frozenset({"", "0", "false", "no"})
#: Rows written to the store at a time.
BATCH_ROWS = 10_000
#: Above this many stations or products, an unknown name gets no spelling hint
#: (difflib over a hundred thousand names costs a second a row).
_HINT_LIMIT = 5_000

Progress = Callable[[int, int], None]  # (characters read, rows read)
#: The station ids a device may name; as a mapping, with the metrics each reports (an
#: empty collection: any metric).
Stations = Mapping[str, Collection[str]] | Collection[str]


@dataclass
class ImportReport:
    """What an import did. ``problems`` holds the first ``max_problems`` problems found,
    in file order; ``rejected`` counts every row skipped for a problem."""

    file: str
    number: int = 0
    rows: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    not_registered: int = 0  # removals of identities the store did not have
    rejected: int = 0
    problems: list[str] = field(default_factory=list)
    devices: int = 0  # devices in the store after the import

    def summary(self) -> str:
        return (
            f"{self.rows:,} rows: {self.added:,} added, {self.updated:,} updated, "
            f"{self.removed:,} removed, {self.not_registered:,} removals of unregistered "
            f"devices, {self.rejected:,} rejected; {self.devices:,} devices registered"
        )


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    identity: str
    record: bytes | None  # None: remove


class _Rejected(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems


def import_devices(
    store: Path,
    csv_path: Path,
    stations: Stations,
    products: Collection[str] | None = None,
    progress: Progress | None = None,
    max_problems: int = 100,
) -> ImportReport:
    """Upsert and remove the devices of ``csv_path`` in the store at ``store``.

    ``stations``: the station ids a device may name (a mapping: with the metrics each
    reports, which the ``metrics`` column must name); ``products``: the product names,
    or None when they are not known (any name is taken). Raises StoreBusy when another
    process writes the store, ValueError when the header is unusable.
    """
    report = ImportReport(str(csv_path))
    db = open_writer(store)
    try:
        _Import(db, report, stations, products, max_problems).run(csv_path, progress)
    finally:
        db.close()
    return report


class _Import:
    def __init__(
        self,
        db: Rdict,
        report: ImportReport,
        stations: Stations,
        products: Collection[str] | None,
        max_problems: int,
    ) -> None:
        self.db, self.report, self.max_problems = db, report, max_problems
        self.stations, self.products = stations, products
        self.number = int(read_meta(db, "imports", 0)) + 1
        report.number = self.number
        self.devices = int(read_meta(db, "devices", 0))
        self.removals = False  # any removal marker written by this import
        self.pending: dict[str, _Row] = {}
        self.problems: list[Problem] = []
        batch = WriteBatch(raw_mode=True)
        write_meta(batch, "imports", self.number)
        db.write(batch)

    def problem(self, p: Problem) -> None:
        if len(self.problems) < self.max_problems:
            self.problems.append(p)

    def run(self, path: Path, progress: Progress | None) -> None:
        file = str(path)
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(_counted(fh, progress, self.report))
            header = [h.strip() for h in next(reader, [])]
            cols = self._columns(file, header)
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                self.report.rows += 1
                try:
                    row = self._row(file, reader.line_num, header, cols, cells)
                except _Rejected as exc:
                    self.report.rejected += 1
                    for p in exc.problems:
                        self.problem(p)
                    continue
                first = self.pending.get(row.identity)
                if first is not None:
                    self._duplicate(file, row, first.line, cols)
                    continue
                self.pending[row.identity] = row
                if len(self.pending) >= BATCH_ROWS:
                    self._write(file, cols)
        self._write(file, cols)
        self._finish(file)

    def _columns(self, file: str, header: list[str]) -> dict[str, int]:
        problems = []
        cols: dict[str, int] = {}
        for i, name in enumerate(header):
            if name not in COLUMNS:
                hint = did_you_mean(name, COLUMNS)
                problems.append(Problem(file, 1, i + 1, "", f"unknown column {name!r}{hint}"))
            elif name in cols:
                problems.append(Problem(file, 1, i + 1, "", f"column {name!r} given twice"))
            cols[name] = i
        if "identity" not in cols:
            problems.append(Problem(file, 1, 1, "", "the header has no 'identity' column"))
        if problems:
            raise ValueError("\n".join(str(p) for p in problems))
        return cols

    def _row(
        self, file: str, line: int, header: list[str], cols: dict[str, int], cells: list[str]
    ) -> _Row:
        problems: list[Problem] = []

        def cell(name: str) -> str:
            i = cols.get(name)
            return cells[i].strip() if i is not None and i < len(cells) else ""

        def bad(name: str, message: str) -> None:
            problems.append(Problem(file, line, cols.get(name, 0) + 1, name, message))

        if len(cells) > len(header):
            problems.append(
                Problem(file, line, len(header) + 1, "",
                        f"{len(cells)} cells, the header names {len(header)} columns")
            )  # fmt: skip
        identity, id_type = cell("identity"), cell("id_type") or "imei"
        if id_type not in ID_TYPES:
            bad("id_type", f"unknown id_type {id_type!r}{did_you_mean(id_type, ID_TYPES)}")
        elif not identity:
            bad("identity", "empty")
        elif (message := identity_problem(id_type, identity)) is not None:
            bad("identity", message)
        deleted = cell("deleted").lower()
        if deleted not in _TRUE and deleted not in _FALSE:
            bad("deleted", f"expected 1, true, yes (remove) or 0, false, no; got {deleted!r}")
        if deleted in _TRUE:
            if problems:
                raise _Rejected(problems)
            return _Row(line, identity, None)
        station, product = cell("station"), cell("product")
        if not station:
            bad("station", "required")
        elif station not in self.stations:
            hint = did_you_mean(station, self.stations) if len(self.stations) <= _HINT_LIMIT else ""
            bad("station", f"unknown station {station!r}{hint}")
        if not product:
            bad("product", "required")
        elif self.products is not None and product not in self.products:
            hint = did_you_mean(product, self.products) if len(self.products) <= _HINT_LIMIT else ""
            bad("product", f"unknown product {product!r}{hint}")
        key = _key(cell("key"), bad)
        metrics = _metrics(cell("metrics"), bad)
        reports = self.stations.get(station) if isinstance(self.stations, Mapping) else None
        for metric in dict.fromkeys(metrics.values()):
            if reports and metric not in reports:
                hint = did_you_mean(metric, reports)
                bad("metrics", f"station {station} does not report {metric!r}{hint} "
                               f"(it reports {', '.join(sorted(reports))})")  # fmt: skip
        if problems:
            raise _Rejected(problems)
        record = device_record(station, product, key, metrics, self.number, line)
        return _Row(line, identity, record)

    def _duplicate(self, file: str, row: _Row, first_line: int, cols: dict[str, int]) -> None:
        self.report.rejected += 1
        message = f"duplicate identity {row.identity!r} (first at line {first_line})"
        self.problem(Problem(file, row.line, cols["identity"] + 1, "identity", message))

    def _write(self, file: str, cols: dict[str, int]) -> None:
        """Write the pending rows, each checked against what this import wrote before."""
        rows = list(self.pending.values())
        self.pending.clear()
        if not rows:
            return
        ids = [r.identity.encode() for r in rows]
        stored = self.db.get([DEVICE + i for i in ids])
        removed = self.db.get([REMOVAL + i for i in ids]) if self.removals else [None] * len(ids)
        batch = WriteBatch(raw_mode=True)
        for row, key, old, gone in zip(rows, ids, stored, removed, strict=True):
            first = _written_by(old, self.number, 4) or _written_by(gone, self.number, 0)
            if first is not None:
                self._duplicate(file, row, first, cols)
                continue
            if row.record is not None:
                batch.put(DEVICE + key, row.record)
                if old is None:
                    self.report.added += 1
                    self.devices += 1
                else:
                    self.report.updated += 1
                continue
            batch.put(REMOVAL + key, msgpack.packb([self.number, row.line]))
            self.removals = True
            if old is None:
                self.report.not_registered += 1
            else:
                batch.delete(DEVICE + key)
                self.report.removed += 1
                self.devices -= 1
        write_meta(batch, "devices", self.devices)
        self.db.write(batch, fast_writes())

    def _finish(self, file: str) -> None:
        batch = WriteBatch(raw_mode=True)
        if self.removals:
            batch.delete_range(REMOVAL, REMOVAL + b"\xff")
        r = self.report
        r.devices = self.devices
        # In file order: a duplicate of an earlier batch is found when its batch is written.
        r.problems = [str(p) for p in sorted(self.problems, key=lambda p: (p.line, p.col))]
        done = {"number": self.number, "file": file, "at": int(time.time() * 1000),
                "rows": r.rows, "added": r.added, "updated": r.updated, "removed": r.removed,
                "rejected": r.rejected}  # fmt: skip
        write_meta(batch, "last_import", done)
        self.db.write(batch, fast_writes())
        self.db.flush()  # durable before the import says it is done; readers see it now


def _written_by(raw: bytes | None, number: int, at: int) -> int | None:
    """The line of this import that wrote ``raw`` (a record or removal), else None."""
    if raw is None:
        return None
    got = msgpack.unpackb(raw)
    return int(got[at + 1]) if got[at] == number else None


def _key(text: str, bad: Callable[[str, str], None]) -> bytes | None:
    if not text:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        bad("key", "expected hex digits")
        return None
    if len(key) < 16:
        bad("key", f"expected at least 16 bytes (32 hex digits), got {len(key)}")
    return key


def _metrics(text: str, bad: Callable[[str, str], None]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (i.strip() for i in text.split(";"))):
        name, sep, metric = (p.strip() for p in item.partition(":"))
        if not sep or not name or not metric:
            bad("metrics", f"expected field:metric pairs separated by ';', got {item!r}")
            return {}
        out[name] = metric
    return out


def _counted(
    lines: Iterator[str], progress: Progress | None, report: ImportReport
) -> Iterator[str]:
    read = 0
    for n, line in enumerate(lines):
        read += len(line)
        if progress is not None and not n & 0x3FFF:
            progress(read, report.rows)
        yield line


def remove_devices(store: Path, identities: Collection[str]) -> tuple[int, list[str]]:
    """Remove devices by identity; returns how many were removed and those not found."""
    return remove_keys(store, DEVICE, "devices", identities)

"""Station registries as CSV, one station per row, for registries kept in spreadsheets.

Columns are the ``Station`` field names (``id,kind,name,basin,district,lat,lon,
warning_level,…``) with three flat spellings:

- ``metrics``: ``water_level:m;rainfall:mm`` (metric:unit pairs separated by ``;``)
- ``tags``: ``a;b;c``
- ``fields.<name>``: a free numeric field, e.g. ``fields.seepage_limit``

An empty cell means "not set". Problems are reported as ``file:line:col`` where ``col``
is the CSV column number (1-based), since a spreadsheet user counts columns, not characters.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from rules.source import Key, Pos, Source

__all__ = ["read_csv_source"]


def read_csv_source(path: Path) -> Source:
    """Rows as ``{"stations": [{...}, ...]}`` with positions, ready for the registry."""
    positions: dict[tuple[Key, ...], Pos] = {(): (1, 1), ("stations",): (1, 1)}
    stations: list[dict[str, Any]] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            i = len(stations)
            positions[("stations", i)] = (line, 1)
            station: dict[str, Any] = {}
            for col, (name, cell) in enumerate(zip(header, row, strict=False), start=1):
                cell = cell.strip()
                if not cell:
                    continue
                if name.startswith("fields."):
                    free = name.removeprefix("fields.")
                    station.setdefault("fields", {})[free] = cell
                    positions[("stations", i, "fields")] = (line, col)
                    positions[("stations", i, "fields", free)] = (line, col)
                    continue
                positions[("stations", i, name)] = (line, col)
                station[name] = _cell(name, cell)
            stations.append(station)
    return Source(str(path), {"stations": stations}, positions)


def _cell(name: str, cell: str) -> Any:
    if name == "tags":
        return [t.strip() for t in cell.split(";") if t.strip()]
    if name == "metrics":
        pairs: dict[str, str] = {}
        for item in cell.split(";"):
            metric, sep, unit = item.partition(":")
            if not sep:
                return cell  # let validation say what is wrong with it
            pairs[metric.strip()] = unit.strip()
        return pairs
    return cell

"""Station registries as CSV, one station per row, for registries kept in spreadsheets.

Columns are the ``Station`` field names (``id,kind,name,basin,district,lat,lon,
warning_level,…``) with these flat spellings:

- ``metrics``: ``water_level:m;rainfall:mm`` (metric:unit pairs separated by ``;``)
- ``tags``: ``a;b;c``
- ``fields.<name>``: a free numeric field, e.g. ``fields.seepage_limit``

A level column (``flood_limit_level``, …) or a ``fields.<name>`` column may vary with
the date (``rules.dated``), cell by cell:

- a number: the same every day (``116.5``);
- seasons: ``06-01..09-30: 116.5; 10-01..05-31: 118.0`` (``from..to: value`` items
  separated by ``;``, both days included; a single day may be written alone,
  ``02-29: 117``), the YAML ``{seasons: [...]}``;
- a rule curve: the path of its ``date,value`` CSV, ending in ``.csv``, relative to the
  registry file (``curves/sk01.csv``), the YAML ``{csv: ...}``.

The zone whose days count is the row's ``tz`` column (the station's zone), or for one
field a column of its own named after it with ``.tz``: ``flood_limit_level.tz``,
``fields.rule_curve.tz`` (the YAML table's ``tz:``); a ``.tz`` cell beside a number or
an empty cell is a problem.

An empty cell means "not set". Problems are reported as ``file:line:col`` where ``col``
is the CSV column number (1-based), since a spreadsheet user counts columns, not
characters; a problem inside a seasons cell (a day that is not one, seasons that overlap)
points at the cell.
"""

from __future__ import annotations

import csv
from collections.abc import Collection
from pathlib import Path
from typing import Any

from rules.errors import Problem
from rules.source import Key, Pos, Source

__all__ = ["read_csv_source"]

_SEASONS_FORM = "seasons as 'MM-DD..MM-DD: value; ...'"


class _BadCell(ValueError):
    """A cell that cannot be what its column takes; the message says what it should be."""


def read_csv_source(
    path: Path, level_fields: Collection[str]
) -> tuple[Source, dict[int, list[Problem]]]:
    """Rows as ``{"stations": [{...}, ...]}`` with positions, ready for the registry,
    and the problems found in reading each station's cells (by station index).
    ``level_fields``: the built-in level columns (``rules.station.LEVEL_FIELDS``)."""
    positions: dict[tuple[Key, ...], Pos] = {(): (1, 1), ("stations",): (1, 1)}
    stations: list[dict[str, Any]] = []
    found: dict[int, list[Problem]] = {}
    file = str(path)
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
            zones: dict[tuple[str, ...], tuple[str, int]] = {}  # field key -> (tz, column)
            bad: set[tuple[str, ...]] = set()  # field keys whose cell had a problem
            for col, (name, cell) in enumerate(zip(header, row, strict=False), start=1):
                cell = cell.strip()
                if not cell:
                    continue
                key = _field_key(name.removesuffix(".tz"), level_fields)
                if name.endswith(".tz") and key is not None:
                    zones[key] = (cell, col)
                    continue
                key = _field_key(name, level_fields)
                if key is None:
                    positions[("stations", i, name)] = (line, col)
                    station[name] = _cell(name, cell)
                    continue
                if len(key) == 2:
                    positions[("stations", i, "fields")] = (line, col)
                positions[("stations", i, *key)] = (line, col)
                try:
                    value = _dated_cell(cell)
                except _BadCell as exc:
                    where = f"stations[{i}].{'.'.join(key)}"
                    found.setdefault(i, []).append(Problem(file, line, col, where, str(exc)))
                    bad.add(key)
                    continue
                holder = station.setdefault("fields", {}) if len(key) == 2 else station
                holder[key[-1]] = value
            for key, (tz, col) in zones.items():
                holder = station.get("fields", {}) if len(key) == 2 else station
                value = holder.get(key[-1])
                if isinstance(value, dict):
                    value["tz"] = tz
                    positions[("stations", i, *key, "tz")] = (line, col)
                elif key not in bad:
                    where = f"stations[{i}].{'.'.join(key)}.tz"
                    message = (
                        f"a time zone for {'.'.join(key)}, which is not seasons or a rule "
                        "curve: its days do not matter"
                    )
                    found.setdefault(i, []).append(Problem(file, line, col, where, message))
            stations.append(station)
    return Source(file, {"stations": stations}, positions), found


def _field_key(column: str, level_fields: Collection[str]) -> tuple[str, ...] | None:
    """The station key of a column that may vary with the date: ``("warning_level",)``,
    ``("fields", "seepage_limit")``; None for the other columns."""
    if column in level_fields:
        return (column,)
    if column.startswith("fields.") and column != "fields.":
        return ("fields", column.removeprefix("fields."))
    return None


def _dated_cell(cell: str) -> Any:
    """A level or free field's cell: a rule curve's path, seasons, or the text of a
    number (validated with the station)."""
    if cell.lower().endswith(".csv"):
        return {"csv": cell}
    if ":" not in cell and ".." not in cell:
        return cell
    seasons = []
    for item in filter(None, (part.strip() for part in cell.split(";"))):
        span, sep, value = (p.strip() for p in item.partition(":"))
        if not sep or not span or not value:
            within = f" in {cell!r}" if item != cell else ""
            raise _BadCell(f"expected a number, {_SEASONS_FORM} or a rule curve FILE.csv; "
                           f"got {item!r}{within}")  # fmt: skip
        first, dots, last = (p.strip() for p in span.partition(".."))
        seasons.append({"from": first, "to": last if dots else first, "value": value})
    if not seasons:
        raise _BadCell(f"expected {_SEASONS_FORM}, got {cell!r}")
    return {"seasons": seasons}


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

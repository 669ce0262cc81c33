"""The station registry: the stations (``rules.station``) of a site, read and checked.

Contract:

- ``Registry`` keeps stations in file order (the compiler's row order) and answers
  ``field_names()`` (every name a rule may reference) and ``get(id)``.
- ``load_registry(path)`` reads ``.yaml``/``.yml`` (``stations: [...]``), ``.csv``
  (see ``registry_csv``) or a registry store folder (``rules.store``, stations imported
  with ``vigil registry import``) and raises ``RulesInvalid`` with every problem found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from pydantic import (
    ValidationError,
)

from rules.dated import SeasonTable, load_curves, season_problems
from rules.errors import Problem, RulesInvalid, problems_from_validation
from rules.source import Key, Pos, Source, SourceError, load_yaml
from rules.station import LEVEL_FIELDS, Station

__all__ = ["Registry", "load_registry", "registry_from_source"]


class Registry:
    """Stations in file order, indexed by id. Immutable after construction."""

    def __init__(self, stations: tuple[Station, ...], file: str = "") -> None:
        self.file = file
        self.stations = stations
        self._by_id = {s.id: s for s in stations}
        free: set[str] = set()
        for s in stations:
            free.update(s.fields)
        self._field_names = frozenset(LEVEL_FIELDS) | free

    def __len__(self) -> int:
        return len(self.stations)

    def __iter__(self) -> Iterator[Station]:
        return iter(self.stations)

    def __contains__(self, station_id: object) -> bool:
        return station_id in self._by_id

    def get(self, station_id: str) -> Station:
        return self._by_id[station_id]

    def field_names(self) -> frozenset[str]:
        """Every name a rule may reference as ``station.<name>`` in this registry."""
        return self._field_names

    def select(self, predicate: Callable[[Station], bool]) -> tuple[Station, ...]:
        return tuple(s for s in self.stations if predicate(s))


def _identities(station: Station) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    out = []
    if station.sl651 is not None:
        out.append((("SL 651", station.sl651.address.upper()), ("sl651", "address")))
    if station.hj212 is not None:
        out.append((("HJ 212", station.hj212.mn), ("hj212", "mn")))
    return out


def load_registry(path: str | Path) -> Registry:
    """Load a ``.yaml``/``.yml`` or ``.csv`` registry; raises RulesInvalid on problems."""
    path = Path(path)
    if path.is_dir():
        return _store_registry(path)
    if path.suffix.lower() == ".csv":
        from rules.registry_csv import read_csv_source

        source, found = read_csv_source(path, LEVEL_FIELDS)
        return registry_from_source(source, found)
    try:
        source = load_yaml(path)
    except SourceError as exc:
        raise RulesInvalid([Problem(str(path), exc.line, exc.col, "", exc.message)]) from exc
    return registry_from_source(source)


def _store_registry(path: Path) -> Registry:
    """The stations of a registry store, validated again (a store written by an older
    schema is reported, not trusted); a problem's line is the station's place in id order."""
    from rules.store import StoreMissing, station_documents

    try:
        docs = list(station_documents(path))
    except StoreMissing as exc:
        raise RulesInvalid([Problem(str(path), 1, 1, "", str(exc))]) from exc
    positions: dict[tuple[Key, ...], Pos] = {(): (1, 1), ("stations",): (1, 1)}
    positions.update({("stations", i): (i + 1, 1) for i in range(len(docs))})
    return registry_from_source(Source(str(path), {"stations": docs}, positions), stored=True)


def _dated_problems(station: Station, source: Source, i: int, stored: bool) -> list[Problem]:
    """Seasons that overlap or leave gaps; rule curves read (``rules.dated``), or, from
    the registry store, brought with their points."""
    out = []
    for name, dated in station.dated_fields().items():
        key: tuple[Key, ...] = (
            ("stations", i, name) if name in LEVEL_FIELDS else ("stations", i, "fields", name)
        )
        if isinstance(dated, SeasonTable):
            for path, message in season_problems(dated):
                line, col = source.position((*key, *path))
                where = f"stations[{i}].{'.'.join(str(k) for k in key[2:])}"
                where += "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path)
                out.append(Problem(source.file, line, col, where, message))
        elif stored and not dated.points():
            line, col = source.position(key)
            where = f"stations[{i}].{'.'.join(str(k) for k in key[2:])}"
            message = (
                f"the store holds rule curve {dated.csv!r} without its points (imported by an "
                "older vigil): import the station registry again"
            )
            out.append(Problem(source.file, line, col, where, message))
        else:
            line, col = source.position((*key, "csv"))
            where = f"stations[{i}].{'.'.join(str(k) for k in key[2:])}.csv"
            base = Path(source.file).parent
            out += load_curves(dated, base, (source.file, line, col, where))
    return out


def registry_from_source(
    source: Source, found: Mapping[int, Sequence[Problem]] | None = None, stored: bool = False
) -> Registry:
    """Validate ``{"stations": [...]}`` data; every station's problems are collected.

    ``found``: problems already found in reading station ``i`` (a CSV's cells), reported
    first among its own. ``stored``: the data come from the registry store, whose rule
    curves carry their points (``rules.dated``).
    """
    found = found or {}
    data = source.data
    if not isinstance(data, dict) or not isinstance(data.get("stations"), list):
        line, col = source.position(())
        raise RulesInvalid(
            [Problem(source.file, line, col, "", "expected a mapping with a 'stations' list")]
        )
    problems: list[Problem] = []
    for key in data:
        if key != "stations":
            line, col = source.position((key,))
            problems.append(Problem(source.file, line, col, str(key), "unknown field"))
    stations: list[Station] = []
    seen: set[str] = set()
    #: (protocol, identity) -> the station that has it: two stations, one identity is
    #: ambiguous (whose readings would a frame be?).
    identities: dict[tuple[str, str], str] = {}
    for i, raw in enumerate(data["stations"]):
        problems += found.get(i, ())
        try:
            station = Station.model_validate(raw, context={"stored": stored})
        except ValidationError as exc:
            problems += problems_from_validation(exc, source, ("stations", i), 0)
            continue
        if station.id in seen:
            line, col = source.position(("stations", i, "id"))
            message = f"duplicate station id {station.id!r}"
            problems.append(Problem(source.file, line, col, f"stations[{i}].id", message))
            continue
        seen.add(station.id)
        stations.append(station)
        problems += _dated_problems(station, source, i, stored)
        for key, path in _identities(station):
            other = identities.setdefault(key, station.id)
            if other != station.id:
                line, col = source.position(("stations", i, *path))
                where = f"stations[{i}].{'.'.join(path)}"
                message = f"{key[0]} {path[-1]} {key[1]!r} already belongs to station {other!r}"
                problems.append(Problem(source.file, line, col, where, message))
    if problems:
        raise RulesInvalid(problems)
    return Registry(tuple(stations), source.file)

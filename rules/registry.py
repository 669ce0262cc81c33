"""The station registry: what each station is, where, what it measures, its levels.

Contract:

- ``Station`` is a frozen pydantic model. Levels and elevations are in metres (the
  datum of the station's own gauge); ``metrics`` maps each metric the station reports
  to its unit (``water_level: m``, ``rainfall: mm``, ``pm2_5: ug/m3``); a reading's unit
  is fixed by this map (DESIGN.md, Contracts).
- ``fields`` holds free numeric attributes (``seepage_limit``, ``k_residual`` …); a rule
  names a built-in level or a free field the same way: ``station.<name>``.
- ``Registry`` keeps stations in file order (the compiler's row order) and answers
  ``field_names()`` (every name a rule may reference) and ``get(id)``.
- ``load_registry(path)`` reads ``.yaml``/``.yml`` (``stations: [...]``), ``.csv``
  (see ``registry_csv``) or a registry store folder (``rules.store``, stations imported
  with ``vigil registry import``) and raises ``RulesInvalid`` with every problem found.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from rules.dated import Dated, RuleCurve, SeasonTable, load_curves, season_problems
from rules.durations import format_duration_ms, parse_duration_ms
from rules.errors import Problem, RulesInvalid, did_you_mean, problems_from_validation
from rules.model import StrictModel
from rules.source import Key, Pos, Source, SourceError, load_yaml
from rules.times import parse_tz

__all__ = [
    "LEVEL_FIELDS",
    "Hj212Identity",
    "Kind",
    "Registry",
    "Sl651Identity",
    "Station",
    "StationKind",
    "load_registry",
]

StationKind = Literal[
    "river_gauge",
    "rain_gauge",
    "reservoir",
    "sluice",
    "tide_gauge",
    "groundwater",
    "seepage_weir",
    "piezometer",
    "deformation",
    "air_quality",
    "weather",
    "waterlogging",
]

DurationMs = Annotated[int, BeforeValidator(parse_duration_ms)]


def _field_form(value: Any) -> str | None:
    if isinstance(value, SeasonTable | RuleCurve):  # serialising
        return "[seasons]" if isinstance(value, SeasonTable) else "[curve]"
    if not isinstance(value, dict):
        return "[number]"
    if "seasons" in value:
        return "[seasons]"
    return "[curve]" if "csv" in value else None


#: A station field: a number, a seasonal table or a rule curve (``rules.dated``). The
#: tags are bracketed so that error paths leave them out (``problems_from_validation``).
FieldValue = Annotated[
    Annotated[float, Tag("[number]")]
    | Annotated[SeasonTable, Tag("[seasons]")]
    | Annotated[RuleCurve, Tag("[curve]")],
    Discriminator(
        _field_form,
        custom_error_type="field_form",
        custom_error_message=(
            "expected a number, a seasonal table {seasons: [...]} or a rule curve {csv: FILE}"
        ),
    ),
]

#: Built-in numeric station attributes a rule may reference as ``station.<name>`` (m).
LEVEL_FIELDS = (
    "elevation",
    "sensor_elevation",
    "warning_level",  # 警戒水位
    "guaranteed_level",  # 保证水位
    "flood_limit_level",  # 汛限水位 (防洪限制水位)
    "normal_pool_level",  # 正常蓄水位
    "design_flood_level",  # 设计洪水位
    "check_flood_level",  # 校核洪水位
    "historical_max_level",  # 历史最高水位
)


class Sl651Identity(StrictModel):
    """How an SL 651 RTU names itself: its 10-digit station address (5 BCD bytes of the
    frame header) and the 4-hex-digit password its frames carry."""

    address: str
    password: str

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9A-Fa-f]{10}", v):
            raise ValueError(f"expected the station address as 10 hex digits, got {v!r}")
        return v.upper()

    @field_validator("password")
    @classmethod
    def _password(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9A-Fa-f]{4}", v):
            raise ValueError(f"expected the password as 4 hex digits, got {v!r}")
        return v.upper()


class Hj212Identity(StrictModel):
    """How an HJ 212 station names itself: its MN (up to 24 characters) and its PW,
    given in the file (``password``) or read at start from an environment variable
    (``password_env``), exactly one of them."""

    mn: str = Field(min_length=1, max_length=24, pattern=r"^[^;,=&\s]+$")
    password: str | None = Field(default=None, min_length=1, max_length=32)
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _one_password(self) -> Hj212Identity:
        if (self.password is None) == (self.password_env is None):
            raise ValueError("give exactly one of password and password_env")
        return self


def _check_kind(value: Any) -> Any:
    choices = get_args(StationKind)
    if isinstance(value, str) and value not in choices:
        raise ValueError(f"unknown station kind {value!r}{did_you_mean(value, choices)}")
    return value


#: A station kind, refused with a spelling hint (``river_gage`` -> ``river_gauge``).
Kind = Annotated[StationKind, BeforeValidator(_check_kind)]


class Station(StrictModel):
    """One station. Levels in metres unless the registry's metric units say otherwise."""

    id: str = Field(min_length=1, pattern=r"^\S+$")
    kind: Kind
    name: str = ""
    basin: str | None = None
    district: str | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    metrics: dict[str, str] = Field(default_factory=dict)  # metric -> unit
    report_interval_ms: DurationMs | None = Field(default=None, alias="report_interval")
    reservoir: str | None = None  # id of the reservoir station a dam instrument belongs to
    elevation: FieldValue | None = None
    sensor_elevation: FieldValue | None = None
    warning_level: FieldValue | None = None
    guaranteed_level: FieldValue | None = None
    flood_limit_level: FieldValue | None = None
    normal_pool_level: FieldValue | None = None
    design_flood_level: FieldValue | None = None
    check_flood_level: FieldValue | None = None
    historical_max_level: FieldValue | None = None
    tags: frozenset[str] = frozenset()
    fields: dict[str, FieldValue] = Field(default_factory=dict)
    #: The station's identity on the gateway's SL 651 / HJ 212 servers, if it reports so.
    sl651: Sl651Identity | None = None
    hj212: Hj212Identity | None = None
    #: The station's time zone (IANA name or UTC offset), for rules whose windows are
    #: aligned to local time with ``tz: station``.
    tz: str | None = None

    @field_validator("tz")
    @classmethod
    def _tz_is_known(cls, v: str | None) -> str | None:
        if v is not None:
            parse_tz(v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _dated_fields_count_the_station_s_days(cls, data: Any) -> Any:
        """A seasonal table or rule curve without its own ``tz`` takes the station's."""
        if not isinstance(data, dict) or not data.get("tz"):
            return data

        def zoned(v: Any) -> Any:
            if isinstance(v, dict) and ("seasons" in v or "csv" in v) and "tz" not in v:
                return {**v, "tz": data["tz"]}
            return v

        out = {k: zoned(v) if k in LEVEL_FIELDS else v for k, v in data.items()}
        if isinstance(out.get("fields"), dict):
            out["fields"] = {k: zoned(v) for k, v in out["fields"].items()}
        return out

    @model_validator(mode="after")
    def _free_fields_do_not_shadow(self) -> Station:
        clash = sorted(set(self.fields) & set(type(self).model_fields))
        if clash:
            raise ValueError(f"free field {clash[0]!r} has the name of a built-in field")
        return self

    def value(self, name: str) -> float | None:
        """The numeric attribute ``name`` (built-in level or free field), None if unset
        or if it varies with the date (:meth:`dated`)."""
        got = self.field(name)
        return None if got is None or isinstance(got, SeasonTable | RuleCurve) else got

    def dated(self, name: str) -> Dated | None:
        """The attribute ``name`` when it varies with the date (``rules.dated``)."""
        got = self.field(name)
        return got if isinstance(got, SeasonTable | RuleCurve) else None

    def field(self, name: str) -> float | Dated | None:
        """The attribute ``name`` as given: a number, a dated field, or None."""
        if name in LEVEL_FIELDS:
            got: float | Dated | None = getattr(self, name)
            return got
        return self.fields.get(name)

    def dated_fields(self) -> dict[str, Dated]:
        """Every attribute that varies with the date, by name."""
        names = (*LEVEL_FIELDS, *self.fields)
        return {n: d for n in names if (d := self.dated(n)) is not None}

    def document(self) -> dict[str, Any]:
        """The station as plain data that ``Station.model_validate`` takes back (what the
        registry store keeps): fields left at their defaults are left out; a rule curve
        carries its points (taken back with the context ``{"stored": True}``)."""
        doc = self.model_dump(mode="json", exclude_defaults=True)
        for name, dated in self.dated_fields().items():
            if isinstance(dated, RuleCurve):  # the store keeps the curve, not its path
                (doc if name in LEVEL_FIELDS else doc["fields"])[name]["points"] = dated.rows()
        if "report_interval_ms" in doc:
            doc["report_interval"] = format_duration_ms(doc.pop("report_interval_ms"))
        if "tags" in doc:
            doc["tags"] = sorted(doc["tags"])
        return doc

    def labels(self) -> dict[str, str]:
        """Labels every alert of this station carries: kind, name, basin, district."""
        out = {"kind": self.kind, "name": self.name or self.id}
        if self.basin:
            out["basin"] = self.basin
        if self.district:
            out["district"] = self.district
        return out


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

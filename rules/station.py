"""A station: what it is, where, what it measures, its levels (one entry of the registry,
``rules.registry``).

Contract:

- ``Station`` is a frozen pydantic model. Levels and elevations are in metres (the
  datum of the station's own gauge); ``metrics`` maps each metric the station reports
  to its unit (``water_level: m``, ``rainfall: mm``, ``pm2_5: ug/m3``); a reading's unit
  is fixed by this map (DESIGN.md, Contracts).
- ``fields`` holds free numeric attributes (``seepage_limit``, ``k_residual`` …); a rule
  names a built-in level (``LEVEL_FIELDS``) or a free field the same way:
  ``station.<name>``. A level or field may be dated: a seasonal table or a rule curve
  (``rules.dated``).
- ``Sl651Identity``/``Hj212Identity``: how a field protocol's frames name the station.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from rules.dated import Dated, RuleCurve, SeasonTable
from rules.durations import format_duration_ms, parse_duration_ms
from rules.errors import did_you_mean
from rules.model import StrictModel
from rules.times import parse_tz

__all__ = [
    "LEVEL_FIELDS",
    "DurationMs",
    "Hj212Identity",
    "Kind",
    "Sl651Identity",
    "Station",
    "StationKind",
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
        return _hex(v, 10, "the station address")

    @field_validator("password")
    @classmethod
    def _password(cls, v: str) -> str:
        return _hex(v, 4, "the password")


def _hex(value: str, digits: int, what: str) -> str:
    """``value``, exactly ``digits`` hex digits, in upper case; else a ValueError that
    names ``what``."""
    if not re.fullmatch(f"[0-9A-Fa-f]{{{digits}}}", value):
        raise ValueError(f"expected {what} as {digits} hex digits, got {value!r}")
    return value.upper()


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

"""Levels and thresholds of the rule file: the four colours, and ``above:``/``below:`` values.

A threshold is a number or ``station.<field> [+|- number]`` (same unit as the metric);
``Ref.resolve`` turns it into the number for one station of the registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ValidationInfo

from rules.errors import did_you_mean
from rules.station import LEVEL_FIELDS, Station

__all__ = ["LEVELS", "Level", "LevelName", "Ref", "Threshold"]

LevelName = Literal["blue", "yellow", "orange", "red"]
LEVELS: tuple[LevelName, ...] = ("blue", "yellow", "orange", "red")


def _check_level(value: Any) -> Any:
    if isinstance(value, str) and value not in LEVELS:
        raise ValueError(
            f"expected one of blue, yellow, orange, red, got {value!r}{did_you_mean(value, LEVELS)}"
        )
    return value


Level = Annotated[LevelName, BeforeValidator(_check_level)]
_REF = re.compile(r"^station\.([A-Za-z_][A-Za-z0-9_]*)\s*(?:([+-])\s*(\d+(?:\.\d*)?|\.\d+))?$")


@dataclass(frozen=True)
class Ref:
    """A threshold: a number, or a station field plus an offset (same unit)."""

    number: float | None = None
    field: str | None = None
    offset: float = 0.0

    def resolve(self, station: Station | None) -> float | None:
        """The threshold at ``station``; None when the station lacks the field."""
        if self.field is None:
            return self.number
        if station is None:
            return None
        base = station.value(self.field)
        return None if base is None else base + self.offset

    def __str__(self) -> str:
        if self.field is None:
            return f"{self.number:g}"
        if self.offset:
            return f"station.{self.field} {'+' if self.offset > 0 else '-'} {abs(self.offset):g}"
        return f"station.{self.field}"


def _parse_ref(value: Any, info: ValidationInfo) -> Ref:
    if isinstance(value, bool):
        raise ValueError(f"expected a number or a station field, got {value!r}")
    if isinstance(value, int | float):
        return Ref(number=float(value))
    # Without a registry (no "station_fields" in the context) any name may be a free field.
    fields = (info.context or {}).get("station_fields")
    known = set(LEVEL_FIELDS) | set(fields or ())
    if isinstance(value, str):
        match = _REF.match(value.strip())
        if match:
            name, sign, amount = match.groups()
            if fields is not None and name not in known:
                raise ValueError(
                    f"no station of the registry defines the field {name!r}"
                    f"{did_you_mean(name, known)}"
                )
            offset = float(amount) * (-1 if sign == "-" else 1) if amount else 0.0
            return Ref(field=name, offset=offset)
        word = value.strip().split()[0] if value.strip() else value
        hint = did_you_mean(word, known)
        if hint:
            hint = hint.replace("mean '", "mean 'station.")
        raise ValueError(f"expected a number or a station field, got {value!r}{hint}")
    raise ValueError(f"expected a number or a station field, got {value!r}")


Threshold = Annotated[Ref, BeforeValidator(_parse_ref)]

"""Station fields that vary with the date: a seasonal table, or a rule curve from a CSV.

A built-in level (``flood_limit_level``) or a free field (under ``fields:``) of the
station registry is a number, or one of::

    flood_limit_level:                  # 汛限水位: main flood season and the rest
      tz: Asia/Shanghai                 # optional; the days are this zone's (default:
                                        # the station's tz, else UTC)
      seasons:
        - {from: 06-01, to: 08-31, value: 102.5}
        - {from: 09-01, to: 05-31, value: 104.0}
    fields:
      rule_curve: {csv: curves/dam7.csv, tz: Asia/Kolkata}

Contract:

- The value is a function of the **local calendar day** (in ``tz``): it is in force
  from that day's local midnight to the next. Seasons (``from``..``to``, both days
  included, ``MM-DD``, wrapping over the new year) cover every day of the year exactly
  once; 29 February takes 28 February's season unless a season names it.
- A rule curve's CSV has a header ``date,value`` and rows ``YYYY-MM-DD,value`` (dated)
  or ``MM-DD,value`` (the same every year), dates strictly increasing. The value of a
  day is interpolated linearly between the points around it (a yearly curve wraps from
  its last point to the first of the next year); before a dated curve's first point
  and after its last, the nearest point's value holds. The path is relative to the
  registry file; :func:`load_curves` reads it (``file:line:col`` problems).
- The registry store (``rules.store``) keeps a curve's points with it
  (``{csv, tz, points: [[date, value], ...]}``, :meth:`RuleCurve.rows`): a station read
  back from the store needs no file. ``points`` is taken only when validating with the
  context ``{"stored": True}``; in a registry file it is an unknown field.
- :class:`DatedCalendar` is what a compiled rule carries
  (``engine.contracts.ruleset.ThresholdCalendar``): for an instant, the day it falls in
  (the intersection of the stations' local days) and the rule's thresholds then.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from rules.errors import Problem
from rules.model import StrictModel
from rules.times import parse_tz

__all__ = [
    "Dated",
    "DatedCalendar",
    "RuleCurve",
    "Season",
    "SeasonTable",
    "load_curves",
    "month_day",
    "season_problems",
]

_LEAP = 2000  # days of the year are numbered in a leap year: 29 February has a place
_MONTH_DAY = re.compile(r"^(\d{1,2})-(\d{1,2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EPOCH = date(1970, 1, 1)
MS_PER_DAY = 86_400_000


def month_day(text: Any) -> tuple[int, int]:
    """``"06-01"`` as (6, 1); ValueError unless it is a day of the year. A pair (6, 1)
    is taken as it is (a station read back from the registry store)."""
    if isinstance(text, list | tuple) and len(text) == 2:
        text = f"{text[0]}-{text[1]}"
    match = _MONTH_DAY.match(str(text).strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"expected a day as MM-DD (06-01), got {text!r}")
    month, day = int(match.group(1)), int(match.group(2))
    try:
        date(_LEAP, month, day)
    except ValueError:
        raise ValueError(f"{text!r} is not a day of the year") from None
    return month, day


def _day_of_year(month: int, day: int) -> int:
    """0..365 in a leap year."""
    return (date(_LEAP, month, day) - date(_LEAP, 1, 1)).days


def _text(month: int, day: int) -> str:
    return f"{month:02d}-{day:02d}"


class Season(StrictModel):
    """``from``..``to`` (both included, ``MM-DD``) and the value in force then."""

    from_: tuple[int, int] = Field(alias="from")
    to: tuple[int, int]
    value: float

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _day(cls, v: Any) -> tuple[int, int]:
        return month_day(v)

    def days(self) -> list[int]:
        """Its days of the (leap) year, in order, wrapping over the new year."""
        first, last = _day_of_year(*self.from_), _day_of_year(*self.to)
        if first <= last:
            return list(range(first, last + 1))
        return [*range(first, 366), *range(0, last + 1)]


class _DatedBase(StrictModel):
    tz: str | None = None  # the zone whose days count; None: UTC (a station's tz fills it)

    @field_validator("tz", mode="before")
    @classmethod
    def _known_zone(cls, v: Any) -> Any:
        if v is not None:
            parse_tz(str(v))
        return v

    @cached_property
    def zone(self) -> tzinfo:
        return UTC if self.tz is None else parse_tz(self.tz)


class SeasonTable(_DatedBase):
    """A value per season of the year (see the module's contract)."""

    seasons: list[Season] = Field(min_length=1)

    @cached_property
    def by_day(self) -> npt.NDArray[np.float64]:
        """The value of each day of a leap year (NaN where no season is: refused by
        :func:`season_problems`)."""
        out = np.full(366, np.nan)
        for season in self.seasons:
            out[season.days()] = season.value
        feb29 = _day_of_year(2, 29)
        if np.isnan(out[feb29]):
            out[feb29] = out[feb29 - 1]
        return out

    def on(self, day: date) -> float:
        return float(self.by_day[_day_of_year(day.month, day.day)])

    def sample_days(self) -> list[date]:
        return [date(_LEAP, *s.from_) for s in self.seasons]


class RuleCurve(_DatedBase):
    """A threshold per date from a CSV (see the module's contract)."""

    csv: str = Field(min_length=1)
    #: Read by :func:`load_curves`: (day, value) where day is days since 1970-01-01 of a
    #: dated curve, or the day of a leap year (0..365) of a yearly one.
    _points: tuple[tuple[int, float], ...] = PrivateAttr(default=())
    _yearly: bool = PrivateAttr(default=False)

    @model_validator(mode="wrap")
    @classmethod
    def _stored_points(cls, data: Any, handler: Any, info: ValidationInfo) -> Any:
        """A curve read back from the registry store brings its points (see the module's
        contract); anywhere else ``points`` is left for the unknown-field check."""
        stored = isinstance(data, dict) and "points" in data and (info.context or {}).get("stored")
        if not stored:
            return handler(data)
        data = dict(data)
        raw = data.pop("points")
        curve = handler(data)
        if not isinstance(raw, list) or not all(isinstance(r, list | tuple) for r in raw):
            raise ValueError("expected the stored points as [[date, value], ...]")
        points, yearly, problems = _parse_rows(
            (k, [str(c) for c in row]) for k, row in enumerate(raw)
        )
        if not points and not problems:
            problems = [(0, 1, "", "the rule curve has no points")]
        if problems:
            k, _col, _field, message = problems[0]
            raise PydanticCustomError("stored_points", "points[{k}]: {message}",
                                      {"k": k, "message": message})  # fmt: skip
        curve._points, curve._yearly = tuple(points), yearly
        return curve

    def points(self) -> tuple[tuple[int, float], ...]:
        return self._points

    def rows(self) -> list[list[str | float]]:
        """The curve's points as ``[date, value]`` rows, dates as in its CSV
        (``YYYY-MM-DD`` or ``MM-DD``): what the registry store keeps. ValueError when
        the CSV was not read (:func:`load_curves`)."""
        if not self._points:
            raise ValueError(f"rule curve {self.csv!r} was not read")
        days = self.sample_days()
        text = (lambda d: _text(d.month, d.day)) if self._yearly else date.isoformat
        return [[text(d), v] for d, (_, v) in zip(days, self._points, strict=True)]

    def on(self, day: date) -> float:
        pts = self._points
        if not self._yearly:
            x = np.array([p[0] for p in pts], np.float64)
            y = np.array([p[1] for p in pts], np.float64)
            return float(np.interp((day - _EPOCH).days, x, y))
        xs: list[int] = []
        ys: list[float] = []
        for year in (day.year - 1, day.year, day.year + 1):
            for doy, v in pts:
                d = date(_LEAP, 1, 1) + timedelta(days=doy)
                try:
                    xs.append((date(year, d.month, d.day) - _EPOCH).days)
                except ValueError:  # 29 February of a common year
                    continue
                ys.append(v)
        return float(np.interp((day - _EPOCH).days, xs, ys))

    def sample_days(self) -> list[date]:
        if self._yearly:
            return [date(_LEAP, 1, 1) + timedelta(days=d) for d, _ in self._points]
        return [_EPOCH + timedelta(days=d) for d, _ in self._points]


Dated = SeasonTable | RuleCurve


def season_problems(table: SeasonTable) -> list[tuple[tuple[Any, ...], str]]:
    """Overlaps (at the later season's ``from``) and gaps (at ``seasons``) of a table,
    as (path below the table, message)."""
    out: list[tuple[tuple[Any, ...], str]] = []
    owner = [-1] * 366
    for k, season in enumerate(table.seasons):
        clash = [d for d in season.days() if owner[d] >= 0]
        if clash:
            other = table.seasons[owner[clash[0]]]
            span = f"{_text(*other.from_)}..{_text(*other.to)}"
            message = f"season overlaps season {span} on {_days(clash)}"
            out.append((("seasons", k, "from"), message))
        for d in season.days():
            if owner[d] < 0:
                owner[d] = k
    feb29 = _day_of_year(2, 29)
    gaps = [d for d in range(366) if owner[d] < 0 and not (d == feb29 and owner[d - 1] >= 0)]
    if gaps:
        out.append((("seasons",), f"no season covers {_days(gaps)}"))
    return out


def _days(days: Sequence[int]) -> str:
    """Runs of days of the leap year as ``MM-DD..MM-DD``, comma separated."""
    runs: list[tuple[int, int]] = []
    for d in days:
        if runs and d == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], d)
        else:
            runs.append((d, d))

    def text(d: int) -> str:
        x = date(_LEAP, 1, 1) + timedelta(days=d)
        return _text(x.month, x.day)

    return ", ".join(text(a) if a == b else f"{text(a)}..{text(b)}" for a, b in runs)


def load_curves(curve: RuleCurve, base: Path, where: tuple[str, int, int, str]) -> list[Problem]:
    """Read ``curve``'s CSV (relative to ``base``) into it; ``where`` is the ``csv`` key's
    (file, line, col, path) for a file that cannot be read. Returns the problems. A curve
    that already has its points (read back from the registry store) is left as it is."""
    if curve.points():
        return []
    file, line, col, path = where
    target = base / curve.csv
    try:
        text = target.read_text(encoding="utf-8-sig")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return [Problem(file, line, col, path, f"cannot read rule curve {str(target)!r}: {reason}")]
    name = str(target)
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip().lower() for c in rows[0]] != ["date", "value"]:
        return [Problem(name, 1, 1, "", "expected the header 'date,value'")]
    points, yearly, found = _parse_rows(enumerate(rows[1:], start=2))
    problems = [Problem(name, n, c, field, message) for n, c, field, message in found]
    if not points and not problems:
        problems.append(Problem(name, 1, 1, "", "the rule curve has no points"))
    if not problems:
        curve._points = tuple(points)
        curve._yearly = yearly
    return problems


def _parse_rows(
    rows: Iterable[tuple[int, list[str]]],
) -> tuple[list[tuple[int, float]], bool, list[tuple[int, int, str, str]]]:
    """A curve's ``(row number, [date, value])`` rows as points (see :class:`RuleCurve`),
    whether it is yearly, and the problems as (row number, column, field, message)."""
    problems: list[tuple[int, int, str, str]] = []
    points: list[tuple[int, float]] = []
    forms: set[bool] = set()
    for n, row in rows:
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            problems.append((n, 1, "", f"expected 2 columns, got {len(row)}"))
            continue
        raw_day, raw_value = row[0].strip(), row[1].strip()
        value_col = len(row[0]) + 2
        try:
            if _DATE.match(raw_day):
                day, yearly = (date.fromisoformat(raw_day) - _EPOCH).days, False
            else:
                day, yearly = _day_of_year(*month_day(raw_day)), True
        except ValueError:
            msg = f"expected a date as YYYY-MM-DD or MM-DD, got {raw_day!r}"
            problems.append((n, 1, "date", msg))
            continue
        try:
            value = float(raw_value)
            if not np.isfinite(value):
                raise ValueError
        except ValueError:
            problems.append((n, value_col, "value", f"expected a number, got {raw_value!r}"))
            continue
        forms.add(yearly)
        if len(forms) > 1:
            msg = "mixes YYYY-MM-DD and MM-DD dates; a curve is dated or yearly"
            problems.append((n, 1, "date", msg))
            return points, False, problems
        if points and day <= points[-1][0]:
            msg = f"dates must increase: {raw_day} is not after the row above"
            problems.append((n, 1, "date", msg))
            continue
        points.append((day, value))
    return points, forms == {True}, problems


def _midnight(day: date, zone: tzinfo) -> int:
    """The local midnight that begins ``day`` in ``zone``, ms UTC."""
    return int(datetime.combine(day, time(0), tzinfo=zone).timestamp() * 1000)


class DatedCalendar:
    """A rule's thresholds when some stations' fields vary with the date.

    ``base``: (n_stations, 4), the constant thresholds (NaN where dated). ``cells``:
    (row, level column, field, offset) of each dated threshold. Implements
    ``engine.contracts.ruleset.ThresholdCalendar``; the last few days are cached (a
    backlog of old readings asks for the same days again).
    """

    def __init__(
        self,
        base: npt.NDArray[np.float64],
        cells: Iterable[tuple[int, int, Dated, float]],
    ) -> None:
        self.base = base
        self.cells = tuple(cells)
        self.zones = tuple({id(c[2].zone): c[2].zone for c in self.cells}.values())
        self._cache: dict[int, tuple[int, int, npt.NDArray[np.float64]]] = {}

    def period(self, t_ms: int) -> tuple[int, int, npt.NDArray[np.float64]]:
        start, end = -(2**62), 2**62
        for zone in self.zones:
            day = datetime.fromtimestamp(t_ms / 1000, zone).date()
            start = max(start, _midnight(day, zone))
            end = min(end, _midnight(day + timedelta(days=1), zone))
        got = self._cache.get(start)
        if got is not None:
            return got
        thresholds = self.base.copy()
        for row, col, dated, offset in self.cells:
            day = datetime.fromtimestamp(t_ms / 1000, dated.zone).date()
            thresholds[row, col] = dated.on(day) + offset
        thresholds.setflags(write=False)
        if len(self._cache) >= 8:
            self._cache.pop(next(iter(self._cache)))
        self._cache[start] = (start, end, thresholds)
        return start, end, thresholds

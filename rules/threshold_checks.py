"""Thresholds resolved for the stations a rule selects, and what ``rules check`` says of
them: a ``station.<field>`` some stations lack, and levels out of order at a station
(on every day where a seasonal table or rule curve changes)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import numpy as np
import numpy.typing as npt

from rules.errors import Problem
from rules.loader import LoadedRule
from rules.schema import Ref, ThresholdSpec
from rules.source import Key
from rules.station import Station

__all__ = ["FloatArray", "level_order", "missing_field", "name_some", "per_station"]

FloatArray = npt.NDArray[np.float64]


def name_some(ids: Sequence[str], limit: int = 5) -> str:
    """``HZ001, HZ002 and 3 more``: enough names to act on, never a wall of them."""
    shown = ", ".join(ids[:limit])
    return f"{shown} and {len(ids) - limit} more" if len(ids) > limit else shown


def missing_field(
    rule: LoadedRule,
    path: tuple[Key, ...],
    ref: Ref | None,
    stations: Sequence[Station],
    dated_ok: bool = False,
) -> list[Problem]:
    """A field a station lacks; one that varies with the date where only a number will
    do (``dated_ok``: a threshold rule's levels take both)."""
    if ref is None or ref.field is None:
        return []
    name = ref.field
    lacking = [s.id for s in stations if s.field(name) is None]
    if lacking:
        return [rule.problem(path, f"station field {name!r} is not set for {name_some(lacking)}")]
    dated = [s.id for s in stations if s.dated(name) is not None]
    if dated and not dated_ok:
        msg = (
            f"station field {name!r} varies with the date at {name_some(dated)}; only a "
            "threshold rule's levels take such a field"
        )
        return [rule.problem(path, msg)]
    return []


def per_station(ref: Ref | None, stations: Sequence[Station], on: date | None = None) -> FloatArray:
    """``ref`` resolved at each station, NaN where unset; a bare number is broadcast. A
    field that varies with the date is NaN, or its value on the local day ``on``."""
    if ref is None:
        return np.full(len(stations), np.nan)
    if ref.field is None:
        return np.full(len(stations), np.nan if ref.number is None else ref.number)
    values = [_value(s, ref.field, on) for s in stations]
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64) + ref.offset


def _value(station: Station, name: str, on: date | None) -> float | None:
    dated = station.dated(name) if on is not None else None
    return station.value(name) if dated is None or on is None else dated.on(on)


def _sample_days(refs: Sequence[Ref], stations: Sequence[Station]) -> list[date]:
    """The days where the rule's dated thresholds turn (season starts, curve points):
    between them they are constant or linear, so an order that holds there holds on
    every day."""
    days: set[date] = set()
    for ref in refs:
        for s in stations if ref.field is not None else ():
            dated = s.dated(ref.field) if ref.field is not None else None
            if dated is not None:
                days.update(dated.sample_days())
    return sorted(days)


def level_order(
    rule: LoadedRule,
    spec: ThresholdSpec,
    refs: list[tuple[tuple[Key, ...], Ref]],
    stations: Sequence[Station] | None,
) -> list[Problem]:
    """Thresholds must not go backwards, per station; reported at the later level."""
    if stations is None:  # numbers only: one row, no station name
        values = np.array([[r.number if r.field is None else np.nan for _, r in refs]])
        ids = [""]
    else:
        days = _sample_days([r for _, r in refs], stations)
        if days:  # thresholds that vary with the date: their order holds on every day
            for day in days:
                values = np.column_stack([per_station(r, stations, day) for _, r in refs])
                when = f"{day:%m-%d}" if day.year == 2000 else day.isoformat()  # 2000: yearly
                ids = [f"{s.id} on {when} " for s in stations]
                out = _order_problems(rule, spec, refs, values, ids)
                if out:
                    return out
            return []
        values = np.column_stack([per_station(r, stations) for _, r in refs])
        ids = [s.id + " " for s in stations]
    return _order_problems(rule, spec, refs, values, ids)


def _order_problems(
    rule: LoadedRule,
    spec: ThresholdSpec,
    refs: list[tuple[tuple[Key, ...], Ref]],
    values: FloatArray,
    ids: list[str],
) -> list[Problem]:
    """Levels whose thresholds (``values``: station x level) go backwards."""
    direction = spec.levels.direction
    names = [name for name, _ in spec.levels.used()]
    order = " <= ".join(names) if direction == 1 else " >= ".join(names)
    word, sign = ("below", "<") if direction == 1 else ("above", ">")
    out = []
    prev = values[:, 0].copy()  # the last set threshold so far, per station
    for i in range(1, len(refs)):
        cur = values[:, i]
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero((cur - prev) * direction < 0)
        if bad.size:
            where = [f"{ids[k]}({cur[k]:g} {sign} {prev[k]:g})" for k in bad]
            msg = (
                f"{names[i]} threshold is {word} {names[i - 1]}'s at {name_some(where, 3)}; "
                f"levels must go {order}"
            )
            out.append(rule.problem(refs[i][0], msg))
        prev = np.where(np.isnan(cur), prev, cur)
    return out

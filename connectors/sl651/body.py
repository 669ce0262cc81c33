"""SL 651-2014 message bodies (FACTS.md §1.2): serial, send time, station, observation
groups of elements, and the readings they carry.

Report bodies (functions 30..3A and 44) are a sequence of elements: ``F1F1`` station
address + type, ``F0F0`` observation time opening a group, ``04`` a time step for the
group's series, then values. Other functions (configuration, status, clock) keep their
content after the station address as raw bytes: Vigil reads no readings from them.
Readings come from reports (30..35, 37, 38, 3A); a test report's (30) are marked
SUSPECT, since a station under test may send what it has not measured.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from connectors.decoded import FrameError, Reading, local_ms
from connectors.sl651.elements import ELEMENTS, ELEMENTS_BY_CODE, SERIES, STATION_TYPES, Series
from engine.contracts.batch import Quality

__all__ = ["Body", "Group", "Value", "decode_ascii_body", "decode_body"]

REPORTS = frozenset({0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x44})
WITH_READINGS = frozenset({0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x37, 0x38, 0x3A})
STEP_MS = 300_000  # series values are 5 minutes apart unless a 04 time step says otherwise
_TYPE_LETTER = {code: chr(code) for code in STATION_TYPES}


class Value(NamedTuple):
    """One element of a group: ``value`` is a number, None (missing), a tuple of them
    (a 5-minute series), or text (manual entry)."""

    element: str  # lead byte(s) in hex: "39", "FFA0"
    code: str | None  # ASCII identifier; None for an element outside Table C.1
    value: float | int | str | tuple[float | None, ...] | None
    raw: str  # the value's bytes in hex (HEX mode) or its token (ASCII mode)


@dataclass
class Group:
    obs_ms: int | None  # the F0F0 observation time, ms UTC; None before any F0F0
    step_ms: int = STEP_MS
    values: list[Value] = field(default_factory=list)


@dataclass
class Body:
    serial: int
    send_ms: int
    station: str | None = None  # F1F1 address, if the body has one
    station_type: str | None = None  # the type letter (P, H, K, Z ...)
    groups: list[Group] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)
    picture: bytes = b""
    rest: bytes = b""  # content not decoded (configuration tables, status, ...)


def _bcd(data: bytes, what: str) -> str:
    digits = data.hex()
    if not digits.isdigit():
        raise FrameError(f"bad BCD digit in {what}")
    return digits


#: Times already converted: stations report on the same minutes, so the same BCD times
#: come again and again (bounded: cleared when full; a miss only costs the conversion).
_TIMES: dict[tuple[bytes, int], int] = {}
_TIMES_MAX = 4096


def _time(data: bytes, what: str, offset_min: int) -> int:
    key = (data, offset_min)
    ms = _TIMES.get(key)
    if ms is not None:
        return ms
    d = _bcd(data, what)
    second = int(d[10:12]) if len(d) == 12 else 0
    ms = local_ms(2000 + int(d[0:2]), int(d[2:4]), int(d[4:6]), int(d[6:8]), int(d[8:10]),
                  second, offset_min, what)  # fmt: skip
    if len(_TIMES) >= _TIMES_MAX:
        _TIMES.clear()
    _TIMES[key] = ms
    return ms


#: A series' raw value -> its value in the unit (None: invalid), per (width, scale,
#: invalid), built on first use: a lookup instead of a multiply and a round per value.
_SERIES_TABLES: dict[tuple[int, float, int], tuple[float | None, ...]] = {}


def _series_table(s: Series) -> tuple[float | None, ...]:
    key = (s.width, s.scale, s.invalid)
    table = _SERIES_TABLES.get(key)
    if table is None:
        table = tuple(
            None if r == s.invalid else round(r * s.scale, 3) for r in range(256**s.width)
        )
        _SERIES_TABLES[key] = table
    return table


def _number(data: bytes, decimals: int, element: str) -> float | None:
    """BCD with the decimal point removed; a leading FF (or F nibble) is a minus sign,
    all-F bytes mean missing."""
    digits = data.hex()
    if digits.count("f") == len(digits):
        return None
    sign = 1.0
    if digits.startswith("ff"):
        sign, digits = -1.0, digits[2:]
    elif digits.startswith("f"):
        sign, digits = -1.0, digits[1:]
    if not digits.isdigit():
        raise FrameError(f"bad BCD digit in element 0x{element}")
    return sign * int(digits) / 10**decimals


def decode_body(
    payload: bytes, direction: str, function: int, station: str, offset_min: int
) -> Body:
    """A complete message body (after STX, before the end char) -> Body."""
    if len(payload) < 8:
        raise FrameError(f"body too short: {len(payload)} bytes, serial and send time need 8")
    body = Body(payload[0] << 8 | payload[1], _time(payload[2:8], "send time", offset_min))
    if direction == "down":
        body.rest = payload[8:]
        return body
    if function not in REPORTS:
        pos = 8
        if payload[8:10] == b"\xf1\xf1" and len(payload) >= 15:
            body.station, pos = payload[10:15].hex().upper(), 15
        body.rest = payload[pos:]
        return body
    _elements(payload, body, offset_min)
    if function in WITH_READINGS:
        quality = Quality.SUSPECT if function == 0x30 else Quality.UNCHECKED
        body.readings = _readings(body, station, quality)
    return body


def _elements(p: bytes, body: Body, offset_min: int) -> None:
    pos, n = 8, len(p)
    group: Group | None = None
    while pos < n:
        lead = p[pos]
        if lead in (0xF0, 0xF1, 0xF2, 0xF3) and p[pos + 1 : pos + 2] != bytes([lead]):
            raise FrameError(f"element 0x{lead:02X} must be written {lead:02X}{lead:02X}")
        if lead == 0xF1:
            if pos + 8 > n:
                raise FrameError("station address (F1F1) truncated")
            body.station = p[pos + 2 : pos + 7].hex().upper()
            body.station_type = _TYPE_LETTER.get(p[pos + 7], f"{p[pos + 7]:02X}")
            pos += 8
            continue
        if lead == 0xF0:
            if pos + 7 > n:
                raise FrameError("observation time (F0F0) truncated")
            group = Group(_time(p[pos + 2 : pos + 7], "observation time", offset_min))
            body.groups.append(group)
            pos += 7
            continue
        if group is None:  # manual entry and a query answer may come without F0F0
            group = Group(None)
            body.groups.append(group)
        if lead == 0xF2:
            text = p[pos + 2 :].decode("ascii", "replace")
            group.values.append(Value("F2", "RGZS", text, p[pos + 2 :].hex().upper()))
            return
        if lead == 0xF3:
            body.picture = p[pos + 2 :]
            return
        if lead == 0xFF:  # user extension: FF, id, definition
            element, head = f"FF{p[pos + 1 : pos + 2].hex().upper()}", 2
        elif lead in (0xFD, 0xFE):
            raise FrameError(f"unknown element 0x{lead:02X}")
        else:
            element, head = f"{lead:02X}", 1
        if pos + head >= n:
            raise FrameError(f"element 0x{element} has no definition byte")
        definition = p[pos + head]
        size, decimals = definition >> 3, definition & 7
        start = pos + head + 1
        data = p[start : start + size]
        if size == 0:
            raise FrameError(f"element 0x{element} has length 0 (definition byte {definition:02X})")
        if len(data) < size:
            raise FrameError(f"element 0x{element} truncated: {len(data)} of {size} bytes")
        pos = start + size
        code = ELEMENTS[lead].code if lead in ELEMENTS else None
        series = SERIES.get(lead)
        if series is not None:
            count = size // series.width
            raws = data if series.width == 1 else struct.unpack_from(f">{count}H", data)
            value: float | int | tuple[float | None, ...] | None = tuple(
                map(_series_table(series).__getitem__, raws)
            )
        elif lead == 0x04:  # time step DDHHMM
            d = _bcd(data, "element 0x04")
            if len(d) < 6:
                raise FrameError("element 0x04 (time step) needs 3 bytes")
            minutes = int(d[0:2]) * 1440 + int(d[2:4]) * 60 + int(d[4:6])
            if minutes == 0:
                raise FrameError("element 0x04 (time step) is zero")
            group.step_ms, value = minutes * 60_000, minutes
        elif lead == 0x45:  # status and alarm bits
            value = int.from_bytes(data, "big")
        else:
            value = _number(data, decimals, element)
        group.values.append(Value(element, code, value, data.hex().upper()))


#: Element (two hex digits, as ``Value.element``) -> the Vigil metric it feeds.
_METRIC_OF = {f"{lead:02X}": e.metric for lead, e in ELEMENTS.items() if e.metric is not None}


def _readings(body: Body, station: str, quality: int) -> list[Reading]:
    out: list[Reading] = []
    add = out.append
    metric_of = _METRIC_OF.get
    for group in body.groups:
        obs = group.obs_ms
        if obs is None:
            continue
        step = group.step_ms
        for v in group.values:
            metric = metric_of(v.element)
            value = v.value
            if metric is None or value is None:
                continue
            if isinstance(value, tuple):
                for i, x in enumerate(value):
                    if x is not None:
                        add(Reading(station, metric, obs + i * step, x, quality))
            elif isinstance(value, float):
                add(Reading(station, metric, obs, value, quality))
    return out


def decode_ascii_body(
    text: str, direction: str, function: int, station: str, offset_min: int
) -> Body:
    """An ASCII-mode body: serial (4 hex), send time (12 digits), then ``ID value `` tokens
    (``ST`` takes the address and the type letter; ``M`` is a missing value)."""
    head = text[:16]
    if len(head) < 16 or not all(c in "0123456789ABCDEFabcdef" for c in head[:4]):
        raise FrameError(f"body too short or bad serial: {head!r}")
    if not head[4:].isdigit():
        raise FrameError(f"bad send time {head[4:]!r}")
    send = _time(bytes.fromhex(head[4:]), "send time", offset_min)
    body = Body(int(head[:4], 16), send)
    if direction == "down" or function not in REPORTS:
        body.rest = text[16:].encode()
        return body
    tokens = text[16:].split()
    group: Group | None = None
    i = 0
    while i < len(tokens):
        code = tokens[i]
        if i + 1 >= len(tokens):
            raise FrameError(f"element {code} has no value")
        token = tokens[i + 1]
        i += 2
        if code == "ST":
            if i >= len(tokens):
                raise FrameError("station (ST) has no type letter")
            body.station, body.station_type = token, tokens[i]
            i += 1
            continue
        if code == "TT":
            if not (len(token) == 10 and token.isdigit()):
                raise FrameError(f"bad observation time {token!r}")
            group = Group(_time(bytes.fromhex(token), "observation time", offset_min))
            body.groups.append(group)
            continue
        if group is None:
            raise FrameError(f"element {code} before an observation time (TT)")
        lead = ELEMENTS_BY_CODE.get(code)
        value: float | tuple[float | None, ...] | None
        if lead is not None and lead in SERIES:
            s = SERIES[lead]
            w = 2 * s.width
            if len(token) % w or not all(c in "0123456789ABCDEFabcdef" for c in token):
                raise FrameError(f"bad series {token!r} for element {code}")
            raws = [int(token[k : k + w], 16) for k in range(0, len(token), w)]
            value = tuple(None if r == s.invalid else round(r * s.scale, 3) for r in raws)
        elif token == "M":
            value = None
        else:
            try:
                value = float(token)
            except ValueError:
                raise FrameError(f"bad value {token!r} for element {code}") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise FrameError(f"bad value {token!r} for element {code}")
        element = f"{lead:02X}" if lead is not None else code
        group.values.append(Value(element, code, value, token))
    if function in WITH_READINGS:
        quality = Quality.SUSPECT if function == 0x30 else Quality.UNCHECKED
        body.readings = _readings(body, station, quality)
    return body

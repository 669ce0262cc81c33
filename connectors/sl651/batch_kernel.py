"""The numba kernel under ``connectors.sl651.batch``: SL 651 uplink HEX/BCD reports
(functions 30..3A and 44, one packet) checked and decoded, frame after frame of one
buffer, into a status and header fields per frame and columns of readings.

A frame the kernel does not do (see ``connectors.sl651.batch``) gets :data:`FALLBACK`;
a rejected one a code of :data:`CODES`, whose text is what the reference
(``connectors.sl651.frame.decode``) says. The element table (``connectors.sl651.elements``)
is compiled into arrays indexed by lead byte (:func:`tables`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
from numba import njit

from connectors.sl651.body import _series_table
from connectors.sl651.elements import ELEMENTS, SERIES

__all__ = ["CODES", "CRC", "FALLBACK", "OK", "Tables", "decode_kernel", "tables"]

OK, FALLBACK = 0, 1
#: Rejection codes (status > 1) and what the reference's reason then says.
CODES: dict[int, str] = {
    2: "frame does not start with 7E7E",
    3: "frame too short",
    4: "bad direction nibble",
    5: "no STX or SYN at byte 13",
    6: "declared length is not the actual one",
    7: "bad end character",
    8: "CRC mismatch",
    9: "body too short",
    10: "bad send or observation time",
    11: "malformed element",
    12: "bad BCD digit in an element",
    13: "bad time step (element 0x04)",
}
(BAD_START, TOO_SHORT, BAD_DIRECTION, BAD_START_CHAR, LENGTH, BAD_END, BAD_CRC, BODY_SHORT,
 BAD_TIME, BAD_ELEMENT, BAD_BCD, BAD_STEP) = range(2, 14)  # fmt: skip

_STEP_MS = 300_000
_REPORTS = (0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x44)
_WITH_READINGS = (0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x37, 0x38, 0x3A)
_END_CHARS = (0x03, 0x17, 0x05, 0x06, 0x15, 0x04, 0x1B)
#: Non-series numbers of more bytes than this go to the reference (see the module doc).
_MAX_NUMBER_BYTES = 7
_POW10 = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7)  # exact: as the reference's 10**d


@dataclass(frozen=True)
class Tables:
    """The element map as arrays by lead byte."""

    metrics: tuple[str, ...]  # metric index -> name
    metric_of: npt.NDArray[np.int16]  # lead -> metric index, -1: none
    series_width: npt.NDArray[np.int8]  # lead -> bytes per series value, 0: not a series
    series_base: npt.NDArray[np.int64]  # lead -> its table's start in series_values
    series_values: npt.NDArray[np.float64]  # raw -> value in the unit, NaN: invalid
    function_flags: npt.NDArray[np.int8]  # function -> 1 report, 2 report with readings
    #: lead -> 1 when its values feed a metric or structure a report (04, 05): a value of
    #: any other element is "unmapped" (``connectors.sl651.server`` counts those)
    mapped: npt.NDArray[np.int8]


@cache
def tables() -> Tables:
    metrics = tuple(sorted({e.metric for e in ELEMENTS.values() if e.metric is not None}))
    metric_of = np.full(256, -1, np.int16)
    for lead, e in ELEMENTS.items():
        if e.metric is not None and lead not in (0x04, 0x45):  # those give ints, not readings
            metric_of[lead] = metrics.index(e.metric)
    width = np.zeros(256, np.int8)
    base = np.zeros(256, np.int64)
    parts: list[npt.NDArray[np.float64]] = []
    starts: dict[tuple[int, float, int], int] = {}
    size = 0
    for lead, s in SERIES.items():
        key = (s.width, s.scale, s.invalid)
        if key not in starts:
            table = np.array([np.nan if v is None else v for v in _series_table(s)], np.float64)
            starts[key], size = size, size + len(table)
            parts.append(table)
        width[lead], base[lead] = s.width, starts[key]
    flags = np.zeros(256, np.int8)
    flags[list(_REPORTS)] = 1
    flags[list(_WITH_READINGS)] = 2
    mapped = np.zeros(256, np.int8)
    mapped[[lead for lead, e in ELEMENTS.items() if e.metric is not None] + [0x04, 0x05]] = 1
    values = np.concatenate(parts) if parts else np.zeros(0, np.float64)
    return Tables(metrics, metric_of, width, base, values, flags, mapped)


def _crc_table() -> npt.NDArray[np.uint16]:
    table = np.zeros(256, np.uint16)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        table[i] = c
    return table


CRC = _crc_table()


@njit(cache=True)
def _bcd_ok(buf, s, e):  # type: ignore[no-untyped-def]
    for i in range(s, e):  # noqa: SIM110 (a loop: what numba compiles best)
        if buf[i] >> 4 > 9 or buf[i] & 15 > 9:
            return False
    return True


@njit(cache=True)
def _bcd2(b):  # type: ignore[no-untyped-def]
    return np.int64(b >> 4) * 10 + (b & 15)


@njit(cache=True)
def _days(y, m, d):  # type: ignore[no-untyped-def]
    """Days from 1970-01-01 to a proleptic Gregorian date (Hinnant's days_from_civil)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@njit(cache=True)
def _time(buf, s, n, offset_min):  # type: ignore[no-untyped-def]
    """BCD YYMMDDHHMM[SS] (``n`` bytes) local time -> epoch ms; -1 when not a time."""
    if not _bcd_ok(buf, s, s + n):
        return -1
    y = 2000 + _bcd2(buf[s])
    mo, d, h, mi = _bcd2(buf[s + 1]), _bcd2(buf[s + 2]), _bcd2(buf[s + 3]), _bcd2(buf[s + 4])
    sec = _bcd2(buf[s + 5]) if n == 6 else 0
    if mo < 1 or mo > 12 or h > 23 or mi > 59 or sec > 59 or d < 1:
        return -1
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    mdays = (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    if d > mdays[mo - 1]:
        return -1
    secs = _days(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec
    return (secs - offset_min * 60) * 1000


@njit(cache=True)
def _frame(buf, s, e, offset_min, crc, metric_of, s_width, s_base, s_values, fflags, mapped,  # type: ignore[no-untyped-def]
           head, r_metric, r_ts, r_value, r0):  # fmt: skip
    """One frame buf[s:e]: status; header fields into ``head``; readings from ``r0``
    on; returns (status, readings written)."""
    n = e - s
    if n >= 1 and buf[s] == 0x01:
        return FALLBACK, 0  # ASCII mode
    if n < 2 or buf[s] != 0x7E or buf[s + 1] != 0x7E:
        return BAD_START, 0
    if n < 17:
        return TOO_SHORT, 0
    dirlen = np.int64(buf[s + 11]) << 8 | buf[s + 12]
    start = buf[s + 13]
    if start == 0x16:
        return FALLBACK, 0  # a packet of a multi-packet message
    if start != 0x02:
        return BAD_START_CHAR, 0
    nibble = dirlen >> 12
    if nibble != 0 and nibble != 8:
        return BAD_DIRECTION, 0
    if (dirlen & 0x0FFF) != n - 17:
        return LENGTH, 0
    end = buf[e - 3]
    ok_end = False
    for ch in _END_CHARS:
        ok_end |= end == ch
    if not ok_end:
        return BAD_END, 0
    c = np.int64(0xFFFF)  # int64 throughout: the same arithmetic with NUMBA_DISABLE_JIT
    for i in range(s, e - 2):
        c = (c >> 8) ^ crc[(c ^ buf[i]) & 0xFF]
    if c != (np.int64(buf[e - 2]) << 8 | buf[e - 1]):
        return BAD_CRC, 0
    function = buf[s + 10]
    if nibble == 8 or fflags[function] == 0:
        return FALLBACK, 0  # downlink, or not a report: no readings, the reference's Body
    station = np.int64(0)
    for i in range(s + 3, s + 8):
        station = station << 8 | buf[i]
    head[0] = station
    head[1] = buf[s + 2]  # centre
    head[2] = np.int64(buf[s + 8]) << 8 | buf[s + 9]  # password
    head[3] = function
    head[4] = end
    # body: serial, send time, elements
    p, pe = s + 14, e - 3
    if pe - p < 8:
        return BODY_SHORT, 0
    head[5] = np.int64(buf[p]) << 8 | buf[p + 1]
    send = _time(buf, p + 2, 6, offset_min)
    if send < 0:
        return BAD_TIME, 0
    head[6] = send
    emit = fflags[function] == 2
    w = r0
    obs = np.int64(-1)  # the group's observation time; -1: none yet
    step = np.int64(_STEP_MS)
    pos = p + 8
    while pos < pe:
        lead = buf[pos]
        if lead >= 0xF0 and lead <= 0xF3 and (pos + 1 >= pe or buf[pos + 1] != lead):
            return BAD_ELEMENT, 0
        if lead == 0xF1:
            if pos + 8 > pe:
                return BAD_ELEMENT, 0
            pos += 8
            continue
        if lead == 0xF0:
            if pos + 7 > pe:
                return BAD_ELEMENT, 0
            obs = _time(buf, pos + 2, 5, offset_min)
            if obs < 0:
                return BAD_TIME, 0
            step = np.int64(_STEP_MS)
            pos += 7
            continue
        if lead == 0xF2 or lead == 0xF3:
            break  # manual-entry text or a picture: the rest of the body
        hd = 1
        if lead == 0xFF:
            hd = 2
        elif lead == 0xFD or lead == 0xFE:
            return BAD_ELEMENT, 0
        if pos + hd >= pe:
            return BAD_ELEMENT, 0
        if hd == 2 or mapped[lead] == 0:
            head[7] = 1  # a value no metric takes
        definition = buf[pos + hd]
        size, decimals = definition >> 3, definition & 7
        ds = pos + hd + 1
        if size == 0 or ds + size > pe:
            return BAD_ELEMENT, 0
        pos = ds + size
        sw = s_width[lead] if lead != 0xFF else 0
        if sw:
            if emit and obs >= 0 and metric_of[lead] >= 0:
                for k in range(size // sw):
                    raw = np.int64(buf[ds + k * sw])
                    if sw == 2:
                        raw = raw << 8 | buf[ds + k * sw + 1]
                    v = s_values[s_base[lead] + raw]
                    if v == v:  # NaN: the invalid raw value
                        r_metric[w], r_ts[w], r_value[w] = metric_of[lead], obs + k * step, v
                        w += 1
        elif lead == 0x04:
            if not _bcd_ok(buf, ds, ds + size):
                return BAD_STEP, 0
            if size < 3:
                return BAD_STEP, 0
            minutes = _bcd2(buf[ds]) * 1440 + _bcd2(buf[ds + 1]) * 60 + _bcd2(buf[ds + 2])
            if minutes == 0:
                return BAD_STEP, 0
            step = np.int64(minutes) * 60_000
        elif lead == 0x45:
            pass  # status and alarm bits: shown by `vigil decode`, no reading
        else:
            first = ds
            all_f = True
            for i in range(ds, ds + size):
                all_f &= buf[i] == 0xFF
            if all_f:
                continue  # missing value
            if size > _MAX_NUMBER_BYTES:
                return FALLBACK, 0
            sign = 1.0
            digits = np.int64(0)
            if buf[ds] == 0xFF:
                sign, first = -1.0, ds + 1
            elif buf[ds] >> 4 == 0xF:
                sign = -1.0
                if buf[ds] & 15 > 9:
                    return BAD_BCD, 0
                digits, first = np.int64(buf[ds] & 15), ds + 1
            if not _bcd_ok(buf, first, ds + size):
                return BAD_BCD, 0
            for i in range(first, ds + size):
                digits = digits * 100 + _bcd2(buf[i])
            if emit and obs >= 0 and lead != 0xFF and metric_of[lead] >= 0:
                r_metric[w], r_ts[w] = metric_of[lead], obs
                r_value[w] = sign * digits / _POW10[decimals]
                w += 1
    return OK, w - r0


@njit(cache=True)
def decode_kernel(buf, offsets, offset_min, crc, metric_of, s_width, s_base, s_values,  # type: ignore[no-untyped-def]
                  fflags, mapped, status, head, r_start, r_metric, r_ts, r_value):  # fmt: skip
    """Frames ``buf[offsets[f]:offsets[f + 1]]``: ``status[f]``, ``head[f]`` and their
    readings from ``r_start[f]`` on; returns the number of readings written."""
    w = 0
    for f in range(len(offsets) - 1):
        st, k = _frame(buf, offsets[f], offsets[f + 1], offset_min, crc, metric_of,
                       s_width, s_base, s_values, fflags, mapped, head[f], r_metric, r_ts,
                       r_value, w)  # fmt: skip
        status[f] = st
        r_start[f] = w
        w += k
    r_start[len(offsets) - 1] = w
    return w

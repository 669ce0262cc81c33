"""The usual MQTT payload parsed straight into two NumPy columns by a numba kernel: no
Python object per reading until the columns become the lists a ``ReadingBlock`` holds.

``parse_readings`` takes only a narrow, exact subset of JSON: an object, or a non-empty
list of objects, whose members are ``"value"`` (a JSON number) and optionally ``"ts"``
(a JSON integer of at most 18 digits within ``MIN_TS_MS``..``MAX_TS_MS``), each once, in
either order, with JSON whitespace anywhere JSON allows it. A ``value`` is taken when its
double is exact by Clinger's fast path (a digit string below 2**53 and a decimal
exponent within ±22: the digits and the power of ten are both exact doubles, so one
IEEE multiplication or division rounds correctly, the double Python's ``float`` gives);
a JSON integer is ``float`` of the integer, so ``-0`` is ``0.0`` as in Python. Anything
else (another key, ``seq`` included, an escape, ``null``, a string, more digits, bytes
after the document, any non-ASCII byte, an empty list) is refused with -1, and the
caller decodes the payload the general way (``connectors.mqtt.payload``), which gives
the same readings for what this takes (``tests/unit/test_mqtt_decode_fast.py``).

What it saves, measured (``bench/MQTT_RESULTS.md``, session 11): msgspec's structs and
the passes over them, and, with the arrays handed on (``connectors.ingest.Times``,
``Values``), the partitioning's pass over Python numbers.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = ["MAX_TS_MS", "MIN_TS_MS", "parse_readings"]

#: Epoch-ms bounds of a ``ts``: the years 1 to 9999 (what ISO 8601 can write). Beyond
#: them a number is no clock reading, and inside them event-time arithmetic (windows,
#: lateness) stays far from int64 overflow. ``connectors.mqtt.payload`` exports them.
MIN_TS_MS = -62_135_596_800_000
MAX_TS_MS = 253_402_300_799_999

#: 10**0 .. 10**22, each exact as a double (10**22 < 2**53 * 2**22 is the last one).
_POW10 = np.array([10.0**k for k in range(23)], np.float64)
#: Mantissas below this (2**53) are exact doubles.
_EXACT = 1 << 53

_SPACE, _TAB, _LF, _CR = 32, 9, 10, 13
_QUOTE, _COLON, _COMMA, _MINUS, _PLUS, _DOT = 34, 58, 44, 45, 43, 46
_LBRACE, _RBRACE, _LBRACKET, _RBRACKET = 123, 125, 91, 93
_ZERO, _NINE, _E, _BIG_E = 48, 57, 101, 69
_V, _A, _L, _U, _T, _S = 118, 97, 108, 117, 116, 115


@njit(cache=True, inline="always")
def _skip(buf: npt.NDArray[np.uint8], i: int) -> int:
    n = len(buf)
    while i < n:
        c = buf[i]
        if c != _SPACE and c != _LF and c != _CR and c != _TAB:
            break
        i += 1
    return i


@njit(cache=True)
def _object(
    buf: npt.NDArray[np.uint8], i: int, received_ms: int, ts_out: npt.NDArray[np.int64],
    value_out: npt.NDArray[np.float64], k: int,
) -> int:  # fmt: skip
    """Parse one object at ``buf[i]`` (a ``{``) into slot ``k``; the index after it, or
    -1 when refused."""
    n = len(buf)
    i += 1
    have_ts = False
    have_value = False
    while True:
        i = _skip(buf, i)
        # Key: "value" or "ts", no escape.
        if i + 4 > n or buf[i] != _QUOTE:
            return -1
        if buf[i + 1] == _T and buf[i + 2] == _S and buf[i + 3] == _QUOTE:
            if have_ts:
                return -1
            have_ts = True
            is_ts = True
            i += 4
        elif (
            i + 7 <= n
            and buf[i + 1] == _V
            and buf[i + 2] == _A
            and buf[i + 3] == _L
            and buf[i + 4] == _U
            and buf[i + 5] == _E
            and buf[i + 6] == _QUOTE
        ):
            if have_value:
                return -1
            have_value = True
            is_ts = False
            i += 7
        else:
            return -1
        i = _skip(buf, i)
        if i >= n or buf[i] != _COLON:
            return -1
        i = _skip(buf, i + 1)
        # Number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
        negative = False
        if i < n and buf[i] == _MINUS:
            negative = True
            i += 1
        if i >= n or buf[i] < _ZERO or buf[i] > _NINE:
            return -1
        mantissa = 0
        digits = 0  # significant digits in the mantissa (leading zeros not counted)
        if buf[i] == _ZERO:
            i += 1  # a digit after a leading zero (not JSON) then ends the member: refused
        else:
            while i < n and _ZERO <= buf[i] <= _NINE:
                # int() first: a uint8 digit made the sum uint8 with the JIT off (NumPy NEP 50)
                if digits == 18:
                    return -1
                mantissa = mantissa * 10 + (int(buf[i]) - _ZERO)
                digits += 1
                i += 1
        exponent = 0
        is_float = False
        if i < n and buf[i] == _DOT:
            is_float = True
            i += 1
            if i >= n or buf[i] < _ZERO or buf[i] > _NINE:
                return -1
            while i < n and _ZERO <= buf[i] <= _NINE:
                if digits == 18:
                    return -1
                mantissa = mantissa * 10 + (int(buf[i]) - _ZERO)
                if mantissa:
                    digits += 1
                exponent -= 1
                i += 1
        if i < n and (buf[i] == _E or buf[i] == _BIG_E):
            is_float = True
            i += 1
            exp_negative = False
            if i < n and (buf[i] == _MINUS or buf[i] == _PLUS):
                exp_negative = buf[i] == _MINUS
                i += 1
            if i >= n or buf[i] < _ZERO or buf[i] > _NINE:
                return -1
            e = 0
            e_digits = 0
            while i < n and _ZERO <= buf[i] <= _NINE:
                if e_digits == 4:
                    return -1
                e = e * 10 + (int(buf[i]) - _ZERO)
                e_digits += 1
                i += 1
            exponent += -e if exp_negative else e
        if is_ts:
            if is_float:
                return -1  # a float ts: the general decoder's
            t = -mantissa if negative else mantissa
            if t < MIN_TS_MS or t > MAX_TS_MS:
                return -1
            ts_out[k] = t
        else:
            if mantissa >= _EXACT:
                return -1
            signed = -mantissa if negative else mantissa
            if not is_float:
                v = float(signed)  # a JSON integer: -0 is 0.0, as float(int("-0"))
            elif mantissa == 0:
                v = -0.0 if negative else 0.0
            elif exponent < -22 or exponent > 22:
                return -1
            elif exponent < 0:
                v = float(signed) / _POW10[-exponent]
            else:
                v = float(signed) * _POW10[exponent]
            value_out[k] = v
        i = _skip(buf, i)
        if i >= n:
            return -1
        if buf[i] == _COMMA:
            i += 1
            continue
        if buf[i] == _RBRACE:
            if not have_value:
                return -1
            if not have_ts:
                ts_out[k] = received_ms
            return i + 1
        return -1


@njit(cache=True)
def _parse(
    buf: npt.NDArray[np.uint8], received_ms: int, ts_out: npt.NDArray[np.int64],
    value_out: npt.NDArray[np.float64],
) -> tuple[int, int, int]:  # fmt: skip
    n = len(buf)
    i = _skip(buf, 0)
    if i >= n:
        return -1, 0, 0
    k = 0
    if buf[i] == _LBRACE:
        i = _object(buf, i, received_ms, ts_out, value_out, 0)
        if i < 0:
            return -1, 0, 0
        k = 1
    elif buf[i] == _LBRACKET:
        while True:
            i = _skip(buf, i + 1)
            # (No column overflows: _SMALLEST bounds the objects. Checked anyway, as
            # numba does not check indexes.)
            if i >= n or buf[i] != _LBRACE or k == len(ts_out):
                return -1, 0, 0
            i = _object(buf, i, received_ms, ts_out, value_out, k)
            if i < 0:
                return -1, 0, 0
            k += 1
            i = _skip(buf, i)
            if i >= n:
                return -1, 0, 0
            if buf[i] == _RBRACKET:
                i += 1
                break
            if buf[i] != _COMMA:
                return -1, 0, 0
    else:
        return -1, 0, 0
    if _skip(buf, i) != n:
        return -1, 0, 0
    lo = ts_out[0]
    hi = ts_out[0]
    for j in range(1, k):
        t = ts_out[j]
        if t < lo:
            lo = t
        elif t > hi:
            hi = t
    return k, lo, hi


#: The smallest object this takes is ``{"value":0}``: a payload of n bytes holds at most
#: n // 11 + 1 readings (the columns' size, allocated before parsing).
_SMALLEST = 11


def parse_readings(
    payload: bytes, received_ms: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], int, int] | None:
    """``payload`` -> (ts column in epoch ms, value column, min ts, max ts), or None when
    it is not in the subset this takes (the module's docstring). An absent ``ts`` is
    ``received_ms``."""
    size = len(payload) // _SMALLEST + 1
    ts = np.empty(size, np.int64)
    value = np.empty(size, np.float64)
    k, lo, hi = _parse(np.frombuffer(payload, np.uint8), received_ms, ts, value)
    if k < 0:
        return None
    return ts[:k], value[:k], lo, hi


# Compiled (or loaded from numba's cache) on import, before any traffic: a first compile
# on the event loop would hold ingest for seconds.
parse_readings(b'[{"value": 0, "ts": 0}]', 0)

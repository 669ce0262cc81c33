"""Vigil's MQTT payloads: JSON ``{"value": 3.21, "ts": 1714000000000}`` (``ts`` in epoch
ms, or an ISO 8601 string with offset; omitted means the time the gateway received it),
or a list of such objects. Anything else is a ``PayloadError`` with the reason.

An object may carry the device's own message number, ``"seq": 42`` (an integer from 0 to
``MAX_SEQ``): the gateway counts the gaps in it as messages lost on the way
(``engine.evaluation.sequence_gaps``); a ``seq`` that is no such integer is a
``PayloadError`` like a bad ``ts``.

Two decoders that take and refuse the same payloads with the same reasons:
``decode_payload``, the reference (the standard library's ``json``, every form checked
reading by reading), and ``decode_columns``, what ingest runs: a numba kernel parses the
usual form (numbers only, no ``seq``; ``connectors.mqtt.decode_fast``) into NumPy
columns, else msgspec decodes it (numbers, ``ts`` in epoch ms or absent, ``seq``)
straight into typed structs (in C, measured about 5 times faster than ``json.loads``
and the checks in Python) and checks the columns with ``min``/``max``; anything neither
takes whole (an ISO ``ts``, a float ``ts``, a value out of range, bytes that are not
JSON, a poison payload) goes to ``decode_payload`` for the answer and the reason.
"""

from __future__ import annotations

import json
import math
import reprlib
from datetime import datetime
from typing import cast

import msgspec

from connectors.ingest import PayloadError, Times, Values
from connectors.mqtt.decode_fast import MAX_TS_MS, MIN_TS_MS, parse_readings

__all__ = ["MAX_SEQ", "MAX_TS_MS", "MIN_TS_MS", "decode_columns", "decode_payload"]

#: The largest ``seq``: a device's counter of up to 64 bits, unsigned.
MAX_SEQ = 2**64 - 1


def _show(x: object) -> str:
    """A bounded repr for reasons: a 401-digit number or a deep list stays short."""
    return reprlib.repr(x)


def _parse_ts(raw: object, received_ms: int) -> int:
    if raw is None:
        return received_ms
    if isinstance(raw, bool):
        raise PayloadError(f"ts must be epoch ms or ISO 8601, got {raw!r}")
    if isinstance(raw, int | float):
        if isinstance(raw, float) and not math.isfinite(raw):
            raise PayloadError(f"ts must be finite, got {raw!r}")
        ms = raw
    elif isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError as exc:
            raise PayloadError(f"ts {_show(raw)} is not ISO 8601") from exc
        if parsed.tzinfo is None:
            raise PayloadError(f"ts {_show(raw)} has no UTC offset")
        ms = parsed.timestamp() * 1000
    else:
        raise PayloadError(f"ts must be epoch ms or ISO 8601, got {type(raw).__name__}")
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise PayloadError(f"ts {_show(raw)} is out of range (epoch ms of the years 1 to 9999)")
    return int(ms)


def _parse_value(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise PayloadError(f"value must be a number, got {_show(raw)}")
    try:
        value = float(raw)
    except OverflowError as exc:  # a JSON integer has any number of digits
        raise PayloadError(f"value {_show(raw)} is out of range for a float") from exc
    if not math.isfinite(value):
        raise PayloadError(f"value must be finite, got {_show(raw)}")
    return value


def _parse_seq(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_SEQ:
        raise PayloadError(f"seq must be an integer from 0 to {MAX_SEQ}, got {_show(raw)}")
    return raw


def decode_payload(
    payload: bytes, received_ms: int, seqs: list[int] | None = None
) -> list[tuple[int, float]]:
    """JSON payload -> [(ts_ms, value)]; raises PayloadError with the reason, never
    anything else, whatever the bytes. ``seqs``, when given, gets the objects' ``seq``
    numbers in payload order (only once the whole payload decoded)."""
    try:
        # UTF-8 only (RFC 8259 §8.1), a byte order mark ignored as it allows: json.loads
        # would guess UTF-16 or -32 from the first bytes, and name that codec in the
        # reason of a payload that is neither.
        doc = json.loads(payload.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not UTF-8: {exc}") from exc
    except ValueError as exc:  # not JSON, or an integer past 4300 digits
        raise PayloadError(f"payload is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise PayloadError("payload is not JSON this decoder can read: nested too deeply") from exc
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise PayloadError("payload is an empty list")
    out = []
    numbers = []
    for item in items:
        if not isinstance(item, dict):
            raise PayloadError(f"expected an object with 'value', got {type(item).__name__}")
        if "value" not in item:
            raise PayloadError("object has no 'value'")
        value = _parse_value(item["value"])
        out.append((_parse_ts(item.get("ts"), received_ms), value))
        if "seq" in item:
            numbers.append(_parse_seq(item["seq"]))
    if seqs is not None:
        seqs.extend(numbers)
    return out


class _Item(msgspec.Struct, gc=False):
    """One reading as msgspec decodes it: an int ``ts`` or none, an optional int ``seq``
    (other forms, ``null`` for ``seq`` included, fall back to the reference)."""

    value: float
    ts: int | None = None
    seq: int | msgspec.UnsetType = msgspec.UNSET


_decoder = msgspec.json.Decoder(_Item | list[_Item])


def decode_columns(
    payload: bytes, received_ms: int, seqs: list[int] | None = None
) -> tuple[list[int], list[float]]:
    """JSON payload -> (ts_ms column, value column): ``decode_payload``'s readings as two
    lists, its ``seq`` numbers into ``seqs`` the same way, and its ``PayloadError`` with
    the same reason for anything it refuses. A list of readings' times is a ``Times``
    (their min and max known: the admission's clock check makes no pass over them).

    The usual payload (numbers only, no ``seq``) is parsed by ``parse_readings`` into
    NumPy columns, returned as lists that carry them (``Times``, ``Values``: the
    partitioning takes the arrays); anything it does not take, by msgspec, then the
    reference."""
    fast = parse_readings(payload, received_ms)
    if fast is not None:
        ts_array, value_array, lo, hi = fast
        return Times(ts_array.tolist(), lo, hi, ts_array), Values(value_array.tolist(), value_array)
    if not payload.isascii():
        try:  # msgspec checks UTF-8 only in what it decodes, not in the fields it skips
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return _columns(decode_payload(payload, received_ms, seqs))  # refused there
    try:
        doc = _decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        # ValidationError too: a form the fast path leaves out; RecursionError: nesting
        # deeper than msgspec follows, which the reference refuses with its reason.
        return _columns(decode_payload(payload, received_ms, seqs))
    if isinstance(doc, _Item):  # one reading: the common form, checked without lists
        t = received_ms if doc.ts is None else doc.ts
        seq = doc.seq
        if (
            MIN_TS_MS <= t <= MAX_TS_MS
            and math.isfinite(doc.value)
            and (seq is msgspec.UNSET or 0 <= seq <= MAX_SEQ)
        ):
            if seqs is not None and seq is not msgspec.UNSET:
                seqs.append(seq)
            return [t], [doc.value]
        return _columns(decode_payload(payload, received_ms, seqs))
    items = doc
    stamped = [item.ts for item in items]
    values = [item.value for item in items]
    try:
        # No pass for an absent ts: min and max raise TypeError on a None among ints
        # (and a lone None fails the comparisons).
        ts = cast(list[int], stamped)
        lo, hi = min(ts), max(ts)
        ts_ok = lo >= MIN_TS_MS and hi <= MAX_TS_MS
    except TypeError:  # an absent ts (None): the time the gateway received it
        ts = [received_ms if t is None else t for t in stamped]
        lo, hi = min(ts), max(ts)
        ts_ok = lo >= MIN_TS_MS and hi <= MAX_TS_MS
    except ValueError:  # an empty list: refused by the reference, with its reason
        return _columns(decode_payload(payload, received_ms, seqs))
    # A "seq" key is spelt so in the bytes, or with an escape: without either, no
    # object has one (no pass over the items for it).
    numbers = (
        [item.seq for item in items if item.seq is not msgspec.UNSET]
        if b'"seq"' in payload or b"\\" in payload
        else []
    )
    # The sum is finite when every value is (and may overflow when all are: then the
    # reference decides).
    if (
        not ts_ok
        or not math.isfinite(sum(values))
        or (numbers and (min(numbers) < 0 or max(numbers) > MAX_SEQ))
    ):
        return _columns(decode_payload(payload, received_ms, seqs))
    if seqs is not None:
        seqs.extend(numbers)
    return Times(ts, lo, hi), values


def _columns(readings: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    return [ts for ts, _ in readings], [value for _, value in readings]

"""SenML (RFC 8428) packs, JSON or CBOR, into readings.

A pack is an array of records. Base fields (``bn`` name, ``bt`` time, ``bu`` unit,
``bv`` value, ``bs`` sum) apply to the record that carries them and every later one
until changed. A record's time is ``bt + t`` seconds: below 2**28 it is relative to the
time the gateway received the pack (it may be negative: "a minute ago"), from 2**28 on
it is absolute Unix time. A record gives ``v`` (+ ``bv``), ``vb`` (1 or 0) or ``s``
(+ ``bs``); string and data values (``vs``, ``vd``) are no reading Vigil can evaluate
and fail the pack with the reason, like any malformed record.

``decode_pack`` gives ``Record`` tuples: (base name, name, ts_ms, value, unit or None);
the caller maps the base name to a device and the name to a metric. Whatever the bytes,
only ``PayloadError`` is raised.
"""

from __future__ import annotations

import json
import math
import reprlib
from typing import Any, NamedTuple

import cbor2

from connectors.ingest import PayloadError

__all__ = ["CONTENT_FORMAT_CBOR", "CONTENT_FORMAT_JSON", "Record", "decode_pack"]

#: CoAP content-formats of application/senml+json and application/senml+cbor (RFC 8428 §12.3).
CONTENT_FORMAT_JSON = 110
CONTENT_FORMAT_CBOR = 112
RELATIVE_LIMIT_S = 2**28
#: Epoch-ms bounds of a reading's time: the years 1 to 9999.
MIN_TS_MS = -62_135_596_800_000
MAX_TS_MS = 253_402_300_799_999

# CBOR labels (RFC 8428 Table 6).
_CBOR_LABELS = {-2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs", -1: "bver"}
_CBOR_LABELS.update({0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd"})


class Record(NamedTuple):
    base_name: str
    name: str
    ts_ms: int
    value: float
    unit: str | None


def _number(record: dict[str, Any], key: str, default: float = 0.0) -> float:
    raw = record.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise PayloadError(f"SenML {key} must be a number, got {reprlib.repr(raw)}")
    try:
        value = float(raw)
    except OverflowError as exc:
        raise PayloadError(f"SenML {key} {reprlib.repr(raw)} is out of range") from exc
    if not math.isfinite(value):
        raise PayloadError(f"SenML {key} must be finite, got {raw!r}")
    return value


def _text(record: dict[str, Any], key: str, default: str | None) -> str | None:
    raw = record.get(key, default)
    if raw is not None and not isinstance(raw, str):
        raise PayloadError(f"SenML {key} must be a string, got {type(raw).__name__}")
    return raw


def _load(payload: bytes, cbor: bool) -> list[Any]:
    try:
        doc = cbor2.loads(payload) if cbor else json.loads(payload)
    except RecursionError as exc:
        raise PayloadError("SenML pack nested too deeply") from exc
    except Exception as exc:  # cbor2 raises several types for bad input; any is bad input
        kind = "CBOR" if cbor else "JSON"
        raise PayloadError(f"payload is not SenML {kind}: {exc}") from exc
    if not isinstance(doc, list) or not doc:
        raise PayloadError("a SenML pack is a non-empty array of records")
    if cbor:
        out = []
        for rec in doc:
            if not isinstance(rec, dict):
                raise PayloadError("a SenML record is a map")
            out.append({_CBOR_LABELS.get(k, str(k)): v for k, v in rec.items()})
        return out
    return doc


def decode_pack(payload: bytes, received_ms: int, *, cbor: bool) -> list[Record]:
    """SenML JSON (``cbor`` False) or CBOR -> records in pack order."""
    base_name, base_time, base_unit, base_value, base_sum = "", 0.0, None, 0.0, 0.0
    out: list[Record] = []
    for rec in _load(payload, cbor):
        if not isinstance(rec, dict):
            raise PayloadError("a SenML record is an object")
        base_name = _text(rec, "bn", base_name) or ""
        base_time = _number(rec, "bt", base_time)
        base_unit = _text(rec, "bu", base_unit)
        base_value = _number(rec, "bv", base_value)
        base_sum = _number(rec, "bs", base_sum)
        if "vs" in rec or "vd" in rec:
            raise PayloadError("SenML string and data values (vs, vd) are not readings")
        if "v" in rec:
            value = _number(rec, "v") + base_value
        elif "vb" in rec:
            if not isinstance(rec["vb"], bool):
                raise PayloadError("SenML vb must be true or false")
            value = 1.0 if rec["vb"] else 0.0
        elif "s" in rec:
            value = _number(rec, "s") + base_sum
        elif set(rec) <= {"bn", "bt", "bu", "bv", "bs", "bver"}:
            continue  # a record of base fields only
        else:
            raise PayloadError(f"SenML record {reprlib.repr(rec)} has no value")
        t = base_time + _number(rec, "t")
        ms = received_ms + t * 1000 if t < RELATIVE_LIMIT_S else t * 1000
        if not MIN_TS_MS <= ms <= MAX_TS_MS:
            raise PayloadError(f"SenML time {t!r} s is out of range")
        name = _text(rec, "n", "") or ""
        out.append(Record(base_name, name, int(ms), value, _text(rec, "u", base_unit)))
    if not out:
        raise PayloadError("SenML pack has no values")
    return out

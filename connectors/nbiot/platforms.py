"""The carriers' HTTP push bodies (shared/domain/FACTS.md §6) into readings.

CTWing (China Telecom AEP), one JSON object per push:

* ``messageType: "dataReport"``: the device by ``IMEI`` (else ``deviceId``); ``payload``
  is ``{"APPdata": "<base64>"}`` in transparent mode (the device's own bytes, decoded by
  its product) or the platform-decoded properties (an object, or its ``serviceData``),
  named by the product's ``properties``. ``timestamp`` (ms) dates undated readings.
* ``messageType: "deviceOnlineOfflineReport"``: ``eventType`` 1 online / 0 offline,
  a reading of metric ``online`` (1.0 / 0.0). ⚠️ The field names of this message are
  from public parser code, not the platform's own documentation.

OneNET (China Mobile), ``{"msg": {...} or [...], "msg_signature": ..., "nonce": ...}``:
the signature is Base64(MD5(token + nonce + msg)) over ``msg`` exactly as sent (its text
in the body, not a re-serialisation). ``type: 1`` is a data point (``ds_id`` the LwM2M
``object_instance_resource`` named in the product's ``lwm2m``, or its ``opaque``
container carrying the device's own bytes as hex or base64; ``at`` ms), ``type: 2``
online (``status`` 1) or offline (0), a reading of metric ``online``.

Anything else (a bad signature, a message type not handled, a value that is not a
number) is a ``PayloadError`` with the reason: the push is dead-lettered, never ingested.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import reprlib
from collections.abc import Iterable
from typing import Any, Protocol

from connectors.ingest import PayloadError, Reading
from connectors.nbiot.products import Decoded, Product
from connectors.nbiot.seal import AuthError
from engine.contracts.devices import Device

__all__ = [
    "ctwing_readings",
    "onenet_readings",
    "onenet_signature",
    "raw_member",
    "verify_onenet_url",
]

ONLINE = "online"
MIN_TS_MS = -62_135_596_800_000
MAX_TS_MS = 253_402_300_799_999


class _Resolver(Protocol):
    """What the platforms need of ``connectors.nbiot.uplink.Decoder``."""

    onenet_token: str | None

    def device(self, *names: str | None) -> Device: ...

    def product(self, device: Device) -> Product: ...

    def readings(
        self, device: Device, decoded: Iterable[Decoded], default_ms: int
    ) -> list[Reading]: ...

    def payload_readings(
        self, device: Device, body: bytes, default_ms: int, content_format: int | None = None
    ) -> list[Reading]: ...


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError as exc:
        raise PayloadError("push body nested too deeply") from exc
    except ValueError as exc:
        raise PayloadError(f"push body is not JSON: {exc}") from exc


def _number(raw: object, what: str) -> float:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if not isinstance(raw, int | float):
        raise PayloadError(f"{what} must be a number, got {reprlib.repr(raw)}")
    try:
        value = float(raw)
    except OverflowError as exc:
        raise PayloadError(f"{what} {reprlib.repr(raw)} is out of range") from exc
    if not math.isfinite(value):
        raise PayloadError(f"{what} must be finite, got {raw!r}")
    return value


def _ts(raw: object, what: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise PayloadError(f"{what} must be epoch ms, got {reprlib.repr(raw)}")
    if not MIN_TS_MS <= raw <= MAX_TS_MS:
        raise PayloadError(f"{what} {reprlib.repr(raw)} is out of range")
    return raw


def _id(raw: object) -> str | None:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    return None


def _bytes_of(text: object, what: str) -> bytes:
    """A binary payload a platform carries as hex or base64 text."""
    if not isinstance(text, str):
        raise PayloadError(f"{what} must be hex or base64 text, got {type(text).__name__}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        pass
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError(f"{what} is neither hex nor base64") from exc


# ---- CTWing ------------------------------------------------------------------------------


def ctwing_readings(r: _Resolver, body: bytes) -> list[Reading]:
    doc = _json(body)
    if not isinstance(doc, dict):
        raise PayloadError("CTWing push is not a JSON object")
    kind = doc.get("messageType")
    ts = _ts(doc.get("timestamp"), "CTWing timestamp")
    device = r.device(_id(doc.get("IMEI")), _id(doc.get("deviceId")))
    if kind == "deviceOnlineOfflineReport":
        event = doc.get("eventType")
        if event not in (0, 1) or isinstance(event, bool):
            raise PayloadError(f"CTWing eventType must be 0 or 1, got {reprlib.repr(event)}")
        return r.readings(device, [(ONLINE, ts, float(event))], ts)
    if kind != "dataReport":
        raise PayloadError(f"CTWing messageType {reprlib.repr(kind)} is not handled")
    payload = doc.get("payload")
    if not isinstance(payload, dict):
        raise PayloadError("CTWing dataReport payload is not an object")
    if "APPdata" in payload:
        raw = _bytes_of(payload["APPdata"], "CTWing APPdata")
        return r.payload_readings(device, raw, ts)
    props = payload.get("serviceData", payload)
    if not isinstance(props, dict):
        raise PayloadError("CTWing serviceData is not an object")
    names = r.product(device).properties
    decoded: list[Decoded] = [
        (names.get(k, k), ts, _number(v, f"CTWing property {k}"))
        for k, v in props.items()
        if (k in names if names else not isinstance(v, dict | list | str))
    ]
    if not decoded:
        raise PayloadError(f"CTWing payload has no property of product {device.product}")
    return r.readings(device, decoded, ts)


# ---- OneNET ------------------------------------------------------------------------------


def onenet_signature(token: str, nonce: str, msg: str) -> str:
    """Base64(MD5(token + nonce + msg)), as OneNET signs pushes and URL checks."""
    digest = hashlib.md5((token + nonce + msg).encode(), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


def _same_signature(expected: str, given: str) -> bool:
    # A '+' of base64 left unescaped in a query string arrives as a space.
    return hmac.compare_digest(expected.encode(), given.replace(" ", "+").encode())


def verify_onenet_url(token: str, msg: str, nonce: str, signature: str) -> bool:
    """OneNET's URL verification: the GET's signature over ``msg`` and ``nonce``."""
    return _same_signature(onenet_signature(token, nonce, msg), signature)


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t\r\n":
        i += 1
    return i


def raw_member(text: str, key: str) -> str | None:
    """The text of top-level member ``key`` of the JSON object ``text``, exactly as
    written (signatures are over the sender's text). ValueError if ``text`` is not an
    object."""
    decoder = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    i = _skip_ws(text, i + 1)
    found = None
    while text[i : i + 1] != "}":
        if text[i : i + 1] != '"':
            raise ValueError(f"expected a member name at {i}")
        name, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        i = _skip_ws(text, i)
        if text[i : i + 1] != ":":
            raise ValueError(f"expected ':' at {i}")
        start = i = _skip_ws(text, i + 1)
        _, i = decoder.raw_decode(text, i)
        if name == key:
            found = text[start:i]
        i = _skip_ws(text, i)
        if text[i : i + 1] == ",":
            i = _skip_ws(text, i + 1)
        elif text[i : i + 1] != "}":
            raise ValueError(f"expected ',' or '}}' at {i}")
    return found


def onenet_readings(r: _Resolver, body: bytes) -> list[Reading]:
    doc = _json(body)
    if not isinstance(doc, dict) or "msg" not in doc:
        raise PayloadError("OneNET push is not an object with msg")
    if r.onenet_token is None:
        raise AuthError("OneNET push, but no OneNET token is configured to verify it")
    nonce, signature = doc.get("nonce"), doc.get("msg_signature")
    if not isinstance(nonce, str) or not isinstance(signature, str):
        raise AuthError("OneNET push without nonce and msg_signature")
    raw_msg = raw_member(body.decode(), "msg")  # body is JSON, so UTF-8
    expected = onenet_signature(r.onenet_token, nonce, raw_msg or "")
    if not _same_signature(expected, signature):
        raise AuthError("OneNET msg_signature does not verify")
    msgs = doc["msg"] if isinstance(doc["msg"], list) else [doc["msg"]]
    out: list[Reading] = []
    for msg in msgs:
        out.extend(_onenet_message(r, msg))
    return out


def _onenet_message(r: _Resolver, msg: object) -> list[Reading]:
    if not isinstance(msg, dict):
        raise PayloadError("OneNET msg is not an object")
    at = _ts(msg.get("at"), "OneNET at")
    device = r.device(_id(msg.get("imei")), _id(msg.get("dev_id")))
    kind = msg.get("type")
    if kind == 2:
        status = msg.get("status")
        if status not in (0, 1) or isinstance(status, bool):
            raise PayloadError(f"OneNET status must be 0 or 1, got {reprlib.repr(status)}")
        return r.readings(device, [(ONLINE, at, float(status))], at)
    if kind != 1:
        raise PayloadError(f"OneNET message type {reprlib.repr(kind)} is not handled")
    ds_id = msg.get("ds_id")
    product = r.product(device)
    if ds_id is not None and ds_id == product.opaque:
        return r.payload_readings(device, _bytes_of(msg.get("value"), "OneNET value"), at)
    metric = product.lwm2m.get(ds_id) if isinstance(ds_id, str) else None
    if metric is None:
        raise PayloadError(f"OneNET ds_id {reprlib.repr(ds_id)} is not in product {product.name}")
    return r.readings(device, [(metric, at, _number(msg.get("value"), f"OneNET {ds_id}"))], at)

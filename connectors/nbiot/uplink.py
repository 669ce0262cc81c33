"""One uplink (a CoAP request, a UDP datagram, a carrier's push) into readings.

``Uplink`` is the ``connectors.ingest.Inbound`` of the NB-IoT paths, with what its path
learned before decoding (the identity in the URI or datagram, the CoAP content-format,
a push's failed verification). ``Decoder`` is the ``decode`` that ``deliver`` calls:
device lookup, payload authentication (``connectors.nbiot.seal``), the product's
decoder (``connectors.nbiot.products``), SenML (``connectors.nbiot.senml``) and the
platforms' bodies (``connectors.nbiot.platforms``). It records on the uplink what
became of it (``outcome``), so that the path can answer the sender after the ack.

Readings go to the device's station, each metric renamed by the device's ``metrics``.
A reading without its own time is dated by the platform's time when a push has one,
else by the gateway's arrival time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from connectors.ingest import Inbound, PayloadError, Reading
from connectors.nbiot.devices import canonical_identity
from connectors.nbiot.platforms import ctwing_readings, onenet_readings
from connectors.nbiot.products import Decoded, Product, Products
from connectors.nbiot.seal import AuthError, Counters, unseal
from connectors.nbiot.senml import CONTENT_FORMAT_CBOR, CONTENT_FORMAT_JSON, decode_pack
from connectors.nbiot.unknown import UnknownDevices
from engine.contracts.devices import Device, DeviceLookup

__all__ = ["Decoder", "UnknownDevice", "Uplink", "split_datagram"]

log = logging.getLogger(__name__)


def _is_cbor(content_format: int | None, body: bytes) -> bool:
    """SenML CBOR by its content-format; without one, JSON starts with '[' (an array)."""
    if content_format in (CONTENT_FORMAT_JSON, CONTENT_FORMAT_CBOR):
        return content_format == CONTENT_FORMAT_CBOR
    return body.lstrip()[:1] != b"["


def split_datagram(data: bytes) -> tuple[str, bytes]:
    """(identity, payload) of a raw UDP datagram (``connectors.nbiot.udp``);
    PayloadError when its header is not one."""
    if not data:
        raise PayloadError("empty datagram")
    n = data[0]
    if n == 0 or len(data) < 1 + n:
        raise PayloadError(f"datagram of {len(data)} bytes is too short for its identity")
    try:
        identity = data[1 : 1 + n].decode("ascii")
    except UnicodeDecodeError as exc:
        raise PayloadError("datagram identity is not ASCII") from exc
    if not identity.isprintable():
        raise PayloadError("datagram identity is not printable")
    return identity, data[1 + n :]


class UnknownDevice(PayloadError):
    """An identity the registry does not hold."""


@dataclass
class Uplink(Inbound):
    #: "coap", "udp", "ctwing" or "onenet".
    path: str = "coap"
    #: The identity the transport gave (CoAP URI path, datagram header); None: in the body.
    identity: str | None = None
    #: The CoAP content-format of the payload, if it said.
    content_format: int | None = None
    #: Why the push failed verification (its receiver checked token or signature).
    auth_error: str | None = None
    #: What became of it: None (readings), or the error it was dead-lettered with.
    outcome: PayloadError | None = None
    #: A sealed payload sent again after its answer was lost: acknowledged, not ingested.
    duplicate: bool = False
    #: The sealed payload's counter (raw UDP echoes it in the answer).
    counter: int | None = None
    readings: int = field(default=0)


class Decoder:
    """``decode`` for ``connectors.ingest.deliver``; raises PayloadError (subclasses
    ``UnknownDevice`` and ``seal.AuthError``) with the reason."""

    def __init__(
        self,
        devices: DeviceLookup,
        products: Products,
        counters: Counters,
        unknown: UnknownDevices,
        onenet_token: str | None = None,
    ) -> None:
        self.devices = devices
        #: The token of the OneNET push subscription (signatures); None: OneNET refused.
        self.onenet_token = onenet_token
        self.products = products
        self.counters = counters
        self.unknown = unknown

    def __call__(self, m: Inbound) -> list[Reading]:
        assert isinstance(m, Uplink)
        try:
            out = self._decode(m)
        except PayloadError as exc:
            m.outcome = exc
            raise
        except Exception as exc:  # deliver dead-letters it as a decoder bug; answer as such
            m.outcome = PayloadError(f"ingest error: {type(exc).__name__}")
            raise
        m.readings = len(out)
        return out

    # ---- devices -----------------------------------------------------------------------

    def device(self, *names: str | None) -> Device:
        """The first of ``names`` (as given, then canonical) the registry holds."""
        tried = [n for n in names if n]
        for name in tried:
            for candidate in dict.fromkeys((name, canonical_identity(name))):
                device = self.devices.lookup(candidate)
                if device is not None:
                    return device
        identity = canonical_identity(tried[0]) if tried else "(none)"
        self.unknown.add(identity)
        raise UnknownDevice(f"unknown device {identity}")

    def product(self, device: Device) -> Product:
        return self.products.get(device.product)

    @staticmethod
    def readings(device: Device, decoded: Iterable[Decoded], default_ms: int) -> list[Reading]:
        rename = device.metrics
        return [
            (device.station, rename.get(metric, metric), default_ms if ts is None else ts, value)
            for metric, ts, value in decoded
        ]

    def payload_readings(
        self, device: Device, body: bytes, default_ms: int, content_format: int | None = None
    ) -> list[Reading]:
        """A device payload (binary or SenML, per its product) -> readings."""
        product = self.product(device)
        if product.kind == "binary":
            return self.readings(device, product.decode_binary(body), default_ms)
        records = decode_pack(body, default_ms, cbor=_is_cbor(content_format, body))
        decoded: list[Decoded] = []
        for r in records:
            name = r.name or canonical_identity(r.base_name)
            want = product.units.get(name)
            if want is not None and r.unit is not None and r.unit != want:
                raise PayloadError(
                    f"product {product.name}: {name} in {r.unit!r}, expected {want!r}"
                )
            decoded.append((name, r.ts_ms, r.value))
        return self.readings(device, decoded, default_ms)

    # ---- paths --------------------------------------------------------------------------

    def _decode(self, m: Uplink) -> list[Reading]:
        if m.auth_error is not None:
            raise AuthError(m.auth_error)
        if m.path == "ctwing":
            return ctwing_readings(self, m.payload)
        if m.path == "onenet":
            return onenet_readings(self, m.payload)
        if m.path == "udp":
            identity, body = split_datagram(m.payload)
            return self._direct(m, identity, body)
        return self._direct(m, m.identity, m.payload)

    def _direct(self, m: Uplink, identity: str | None, body: bytes) -> list[Reading]:
        """CoAP and raw UDP: identity from the transport, or (SenML) the base name."""
        if identity is not None:
            device = self.device(identity)
        else:
            records = decode_pack(body, m.received_ms, cbor=_is_cbor(m.content_format, body))
            device = self.device(records[0].base_name)
        if device.key is None:
            return self.payload_readings(device, body, m.received_ms, m.content_format)
        if identity is None:
            raise AuthError(
                f"device {device.identity} has a key: it must send sealed payloads "
                "to its own URI path"
            )
        counter, body, tag = unseal(device.key, device.identity, body)
        m.counter = counter
        if not self.counters.check(device.identity, counter, tag):
            m.duplicate = True
            return []
        out = self.payload_readings(device, body, m.received_ms, m.content_format)
        self.counters.accept(device.identity, counter, tag)
        return out

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

Admission (``stations``: the gateway's station registry, read per uplink so that a
reload applies at once): a device whose registry entry names a station the station
registry does not have sends nothing usable, so its uplink is dead-lettered
(``unknown station ...``, answered like an unknown device) and counted per device and
station. A reading of a metric its station does not report (the station lists its
metrics) could never be evaluated: an uplink with only such readings is dead-lettered
(``unknown metric ...``); one that also has readings of the station's metrics gives
those, and its refused readings are counted per station and metric, the first of each
dead-lettered with the uplink's bytes (``refusals``), like SL 651's elements that feed
no metric. Nothing refused vanishes without a dead letter and a count.

Time (``admission``, the ``connectors.ingest.Admission`` every connector shares): an
uplink with a reading stamped before 2000, or further ahead of the gateway's clock at
its arrival than ``ingest.max_clock_skew_s``, is dead-lettered whole with the reason,
like an MQTT message (a device clock that wrong dates none of its readings).

A sealed payload's counter is remembered (``seal.Counters``) only when its uplink is
taken: one refused whole (unknown station or metric, its clock, a payload that cannot
be read) was never delivered, so the same payload sent again, once the registry is
fixed, is decoded again and taken, not answered as a duplicate of readings that exist
only as a dead letter. (Sent again after a later counter was taken, it is a replay.)

``refusal_class`` names why an uplink was refused, from a bounded set (``REFUSALS``),
for the counts that ``/metrics`` and ``vigil status`` show.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from connectors.ingest import Admission, Inbound, PayloadError, Reading
from connectors.nbiot.devices import canonical_identity
from connectors.nbiot.platforms import ctwing_readings, onenet_readings
from connectors.nbiot.products import Decoded, Product, Products
from connectors.nbiot.seal import AuthError, Counters, unseal
from connectors.nbiot.senml import CONTENT_FORMAT_CBOR, CONTENT_FORMAT_JSON, decode_pack
from connectors.nbiot.unknown import UnknownDevices
from engine.contracts.dead_letters import reason_class
from engine.contracts.devices import Device, DeviceLookup

__all__ = [
    "REFUSALS",
    "Decoder",
    "NotAdmitted",
    "Stations",
    "UnknownDevice",
    "UnknownMetric",
    "UnknownStation",
    "Uplink",
    "refusal_class",
    "split_datagram",
]

#: The station registry running now: station id -> the metrics it reports (empty: any);
#: None: no registry to check against (every station and metric taken).
Stations = Callable[[], Mapping[str, Collection[str]] | None]

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


class NotAdmitted(PayloadError):
    """A registered device whose readings the gateway cannot take: its station is not
    in the station registry, or none of its metrics is one its station reports."""


class UnknownStation(NotAdmitted):
    """The device's station is not in the station registry."""


class UnknownMetric(NotAdmitted):
    """None of the uplink's metrics is one its station reports."""


#: Why an uplink is refused (dead-lettered): a bounded set, for metric labels.
REFUSALS = (
    "unknown_device",
    "unknown_station",
    "unknown_metric",
    "auth",
    "bad_timestamp",
    "bad_payload",
    "ingest_error",
)
_REFUSAL_TYPES: tuple[tuple[type[PayloadError], str], ...] = (
    (UnknownDevice, "unknown_device"),
    (UnknownStation, "unknown_station"),
    (UnknownMetric, "unknown_metric"),
    (AuthError, "auth"),
)


def refusal_class(exc: PayloadError) -> str:
    """One of ``REFUSALS``: by the error's type, else by its reason (a reading's time
    refused by ``Admission``, a decoder bug), else ``bad_payload``."""
    for kind, name in _REFUSAL_TYPES:
        if isinstance(exc, kind):
            return name
    cls = reason_class(str(exc))
    return cls if cls in ("bad_timestamp", "ingest_error") else "bad_payload"


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
        stations: Stations | None = None,
        refused_capacity: int = 10_000,
        admission: Admission | None = None,
    ) -> None:
        """``admission``: the readings' time bounds (``ingest.max_clock_skew_s``)."""
        self.devices = devices
        #: The token of the OneNET push subscription (signatures); None: OneNET refused.
        self.onenet_token = onenet_token
        self.products = products
        self.counters = counters
        self.unknown = unknown
        self.stations = stations
        self.admission = admission or Admission()
        #: Uplinks of devices whose station is unknown, by ``identity -> station``.
        self.unknown_stations = UnknownDevices(
            refused_capacity, "devices of unknown stations (device -> station)"
        )
        #: Readings refused for a metric their station does not report, by
        #: ``station/metric``.
        self.refused_metrics = UnknownDevices(
            refused_capacity, "metrics their station does not report (station/metric)"
        )
        #: Readings left out of taken uplinks for a metric their station does not report.
        self.dropped_readings = 0
        #: (raw, reason, source) to dead-letter with the batch's readings: the first
        #: refused reading of each station and metric in an uplink that gave others.
        self.refusals: list[tuple[bytes, str, str]] = []
        self._stations: Mapping[str, Collection[str]] | None = None
        #: (device identity, station, metric) -> readings refused in the uplink being
        #: decoded.
        self._refused: dict[tuple[str, str, str], int] = {}
        #: (device, counter, tag) of the sealed uplink being decoded: remembered once
        #: it is taken.
        self._sealed: tuple[str, int, bytes] | None = None

    def __call__(self, m: Inbound) -> list[Reading]:
        assert isinstance(m, Uplink)
        self._stations = None if self.stations is None else self.stations()
        self._refused = {}
        self._sealed = None
        try:
            out = self._decode(m)
            self.admission.check_times([r[2] for r in out], m.received_ms)
            if self._refused:
                out = self._refuse(m, out)
        except PayloadError as exc:
            m.outcome = exc
            raise
        except Exception as exc:  # deliver dead-letters it as a decoder bug; answer as such
            m.outcome = PayloadError(f"ingest error: {type(exc).__name__}")
            raise
        if self._sealed is not None:  # taken: a resend is a duplicate from now on
            self.counters.accept(*self._sealed)
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

    def readings(
        self, device: Device, decoded: Iterable[Decoded], default_ms: int
    ) -> list[Reading]:
        """The device's decoded values as readings of its station, renamed; NotAdmitted
        when the station registry does not have its station. Readings of a metric the
        station does not report are left out and noted for ``_refuse``."""
        rename, station = device.metrics, device.station
        stations = self._stations
        if stations is None:
            return [
                (station, rename.get(metric, metric), default_ms if ts is None else ts, value)
                for metric, ts, value in decoded
            ]
        reports = stations.get(station)
        if reports is None:
            self.unknown_stations.add(f"{device.identity} -> {station}")
            raise UnknownStation(
                f"unknown station {station!r} of device {device.identity}: its registry "
                "entry names it, the station registry does not have it"
            )
        out: list[Reading] = []
        for metric, ts, value in decoded:
            name = rename.get(metric, metric)
            if reports and name not in reports:
                key = (device.identity, station, name)
                self._refused[key] = self._refused.get(key, 0) + 1
                continue
            out.append((station, name, default_ms if ts is None else ts, value))
        return out

    def _refuse(self, m: Uplink, taken: list[Reading]) -> list[Reading]:
        """Count the uplink's readings refused for their metric; NotAdmitted when it
        gave no other, else note the first of each station and metric for a dead
        letter (``refusals``) and return the readings taken."""
        stations = self._stations
        assert stations is not None  # readings are refused only against a registry
        reasons = []
        for (identity, station, metric), n in self._refused.items():
            first = self.refused_metrics.add(f"{station}/{metric}", n) == n
            reports = ", ".join(sorted(stations[station]))
            reason = (
                f"unknown metric {metric!r} of device {identity}: station {station} "
                f"reports {reports} (its registry entry)"
            )
            if taken and first:
                self.refusals.append(
                    (m.payload, f"{reason}; not ingested, the uplink's other readings "
                     "are; further readings of it are only counted", m.source)
                )  # fmt: skip
            reasons.append(reason)
        if not taken:
            raise UnknownMetric("; ".join(reasons))
        self.dropped_readings += sum(self._refused.values())
        return taken

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
        self._sealed = (device.identity, counter, tag)
        return out

"""An NB-IoT device fleet: N devices of a few products, on NB-IoT cadences, delivering
through the gateway's CoAP and UDP ports or as CTWing/OneNET-shaped pushes, with faults
on request.

* ``encode(product, rows)``: a binary payload exactly as the product profile reads it
  (``connectors/nbiot/products.yaml``); ``senml(...)``: a SenML JSON pack.
* ``ctwing_body``/``onenet_body``: the platforms' push bodies (FACTS.md §6), OneNET's
  signed with the subscription token.
* ``Fleet``: devices (``fleet_devices``, and the device file for the gateway), their
  reports over a span of simulated time (``reports``: PSM devices hourly or daily, event
  reports every 5 min while water stands or a cover is open, store-and-forward
  backlogs when coverage returns), and ``faults`` (duplicates, clock skew, bad
  signatures, unregistered devices, truncated datagrams).
* ``python -m simulators.nbiot_fleet --coap HOST:PORT --devices N ...`` sends it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import random
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import yaml

from connectors.nbiot.platforms import onenet_signature
from connectors.nbiot.products import Product, load_products
from connectors.nbiot.seal import seal

__all__ = [
    "Fleet",
    "Report",
    "SimDevice",
    "ctwing_body",
    "datagram",
    "encode",
    "onenet_body",
    "senml",
]

_FORMATS = {"u8": "B", "i8": "b", "u16": "H", "i16": "h", "u32": "I", "i32": "i"}
_FORMATS.update({"f32": "f", "f64": "d"})


def encode(product: Product, rows: Sequence[tuple[int | None, Mapping[str, float]]]) -> bytes:
    """Rows of (epoch seconds or None, {metric: value}) as the product's binary payload."""
    order = ">" if product.byte_order == "big" else "<"
    out = bytearray(product.prefix)
    for ts_s, values in rows:
        record = bytearray(product.record_size)
        if product.time is not None:
            struct.pack_into(order + "I", record, product.time.offset, ts_s or 0)
        for f in product.fields:
            raw = (values[f.metric] - f.add) / f.scale
            code = _FORMATS[f.type]
            packed = raw if code in "fd" else round(raw)
            struct.pack_into(order + code, record, f.offset, packed)
        out += record
    return bytes(out)


def senml(base_name: str, rows: Sequence[tuple[float, Mapping[str, float]]]) -> bytes:
    """A SenML JSON pack: rows of (epoch seconds, {name: value})."""
    pack: list[dict[str, object]] = []
    for i, (t, values) in enumerate(rows):
        for j, (name, v) in enumerate(values.items()):
            rec: dict[str, object] = {"n": name, "v": v, "t": t}
            if i == 0 and j == 0:
                rec["bn"] = base_name
            pack.append(rec)
    return json.dumps(pack).encode()


def datagram(identity: str, payload: bytes) -> bytes:
    """A raw UDP datagram (``connectors.nbiot.udp``)."""
    ident = identity.encode()
    return bytes([len(ident)]) + ident + payload


def ctwing_body(imei: str, device_id: str, ts_ms: int, payload: bytes, sn: int = 1) -> bytes:
    """A CTWing ``dataReport`` in transparent mode."""
    return json.dumps(
        {
            "upPacketSN": sn,
            "upDataSN": sn,
            "topic": "v1/up/ad",
            "timestamp": ts_ms,
            "tenantId": "2000000",
            "serviceId": "",
            "protocol": "lwm2m",
            "productId": "15000000",
            "payload": {"APPdata": base64.b64encode(payload).decode()},
            "messageType": "dataReport",
            "deviceType": "",
            "deviceId": device_id,
            "assocAssetId": "",
            "IMSI": "undefined",
            "IMEI": imei,
        }
    ).encode()


def onenet_body(token: str, msg: Mapping[str, object], nonce: str = "abcdefgh") -> bytes:
    """A OneNET push of one message, signed with ``token``."""
    text = json.dumps(msg, separators=(",", ":"))
    sig = onenet_signature(token, nonce, text)
    return ('{"msg":' + text + f',"msg_signature":"{sig}","nonce":"{nonce}"}}').encode()


@dataclass(frozen=True)
class SimDevice:
    identity: str  # an IMEI
    product: str
    station: str
    key: bytes | None
    platform_id: str
    #: Metric renames (product name -> the station's metric).
    metrics: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Report:
    """One uplink: a device's rows, sent at ``arrival_s`` (simulated)."""

    device: SimDevice
    rows: list[tuple[int, dict[str, float]]]
    arrival_s: int
    counter: int = 0


def fleet_devices(
    n: int, stations: Sequence[str], seed: int = 1, keyed: bool = True
) -> list[SimDevice]:
    """``n`` devices: waterlogging sensors (half), manhole covers, rain gauges."""
    rng = random.Random(seed)
    products = ("waterlog-v1", "waterlog-v1", "manhole-v1", "raingauge-v1")
    out = []
    for i in range(n):
        product = products[i % len(products)]
        key = rng.randbytes(16) if keyed else None
        metrics = {"water_depth": "water_level"} if product == "waterlog-v1" else {}
        out.append(
            SimDevice(
                identity=f"86{i:013d}",
                product=product,
                station=stations[i % len(stations)],
                key=key,
                platform_id=f"dev{i:08d}",
                metrics=metrics,
            )
        )
    return out


def devices_yaml(devices: Sequence[SimDevice]) -> str:
    """The gateway's device file for these devices."""
    entries = []
    for d in devices:
        e: dict[str, object] = {"identity": d.identity, "station": d.station, "product": d.product}
        if d.key is not None:
            e["key_hex"] = d.key.hex()
        if d.metrics:
            e["metrics"] = dict(d.metrics)
        e["aliases"] = [d.platform_id]
        entries.append(e)
    return yaml.safe_dump({"devices": entries}, sort_keys=False)


class Fleet:
    """Reports of devices over simulated time, and their wire forms."""

    def __init__(self, devices: Sequence[SimDevice], seed: int = 1) -> None:
        self.devices = list(devices)
        self.products = load_products()
        self.rng = random.Random(seed)
        self._counters = {d.identity: 0 for d in devices}

    def _values(self, d: SimDevice, t: int, start: int) -> dict[str, float]:
        phase = (t - start) / 86_400
        if d.product == "waterlog-v1":
            depth = max(0.0, 0.4 * math.sin(math.pi * phase)) + self.rng.random() * 0.01
            return {"water_depth": round(depth, 3), "battery_v": 3.6}
        if d.product == "manhole-v1":
            return {
                "cover_open": float(self.rng.random() < 0.05),
                "tilt_deg": 0.5,
                "battery_v": 3.5,
            }
        return {"rainfall": round(self.rng.random() * 3, 1), "battery_v": 3.55}

    def reports(
        self, start_s: int, hours: float, cadence_s: int = 3600, backlog_every: int = 0
    ) -> Iterator[Report]:
        """Each device reports every ``cadence_s``; with ``backlog_every`` > 0, every so
        many reports a device was out of coverage and uploads them all at once."""
        end = start_s + int(hours * 3600)
        for d in self.devices:
            held: list[tuple[int, dict[str, float]]] = []
            timed = self.products.get(d.product).time is not None
            for k, t in enumerate(range(start_s + self.rng.randrange(cadence_s), end, cadence_s)):
                row = (t, self._values(d, t, start_s))
                if timed and backlog_every and k % backlog_every != backlog_every - 1:
                    held.append(row)
                    continue
                yield Report(d, [*held, row], t)
                held = []

    def payload(self, r: Report) -> bytes:
        """The report as its device sends it (sealed when the device has a key)."""
        product = self.products.get(r.device.product)
        body = encode(product, r.rows if product.time else [(None, r.rows[-1][1])])
        if r.device.key is None:
            return body
        self._counters[r.device.identity] += 1
        r.counter = self._counters[r.device.identity]
        return seal(r.device.key, r.device.identity, r.counter, body)

    def faults(self, r: Report, payload: bytes, kind: str) -> bytes:
        """``payload`` spoiled as asked: truncated, bad_signature, skew (clock an hour
        ahead is done on rows before encoding: use ``skewed``)."""
        if kind == "truncated":
            return payload[: max(1, len(payload) // 2)]
        if kind == "bad_signature":
            return payload[:-1] + bytes([payload[-1] ^ 0xFF])
        raise ValueError(f"unknown fault {kind!r}")

    @staticmethod
    def skewed(r: Report, seconds: int) -> Report:
        return Report(r.device, [(t + seconds, v) for t, v in r.rows], r.arrival_s)


async def _send_coap(host: str, port: int, fleet: Fleet, reports: list[Report]) -> int:
    import aiocoap

    ctx = await aiocoap.Context.create_client_context()
    ok = 0
    try:
        for r in reports:
            req = aiocoap.Message(
                code=aiocoap.POST,
                uri=f"coap://{host}:{port}/nb/{r.device.identity}",
                payload=fleet.payload(r),
            )
            resp = await ctx.request(req).response
            ok += resp.code == aiocoap.CHANGED
    finally:
        await ctx.shutdown()
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--coap", required=True, help="HOST:PORT of the gateway's CoAP port")
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--stations", default="HZ001,HZ002,HZ003")
    p.add_argument("--hours", type=float, default=24)
    p.add_argument("--write-devices", help="write the gateway's device file here and exit")
    args = p.parse_args(argv)
    devices = fleet_devices(args.devices, args.stations.split(","))
    if args.write_devices:
        with open(args.write_devices, "w", encoding="utf-8") as f:
            f.write(devices_yaml(devices))
        return 0
    host, port = args.coap.rsplit(":", 1)
    fleet = Fleet(devices)
    import time

    reports = list(fleet.reports(int(time.time()) - int(args.hours * 3600), args.hours))
    ok = asyncio.run(_send_coap(host, int(port), fleet, reports))
    print(f"{ok}/{len(reports)} reports confirmed")
    return 0 if ok == len(reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())

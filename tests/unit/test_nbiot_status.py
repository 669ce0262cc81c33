"""The NB-IoT ingest's counts: uplinks by path and outcome, refused uplinks by reason,
readings dropped for a metric their station does not report; the same families on
``/metrics`` (``NbiotState``) and in ``vigil status``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from connectors.ingest import PayloadError, Reading
from connectors.nbiot.products import load_products
from connectors.nbiot.seal import AuthError, seal
from connectors.nbiot.service import NbiotIngest, NbiotOptions
from connectors.nbiot.uplink import (
    REFUSALS,
    UnknownDevice,
    UnknownMetric,
    UnknownStation,
    Uplink,
    refusal_class,
)
from engine.contracts.batch import ReadingBlock
from engine.contracts.devices import Device
from engine.runtime.services.observe_metrics import NbiotState
from engine.tools.observe_cli import format_status
from simulators.nbiot_fleet import ctwing_body, datagram, encode

NOW = 1_800_000_000_000
KEY = bytes(range(16))
RENAME = {"water_depth": "water_level"}
DEVICES = {
    "861000000000041": Device("861000000000041", "HZ001", "waterlog-v1", None, RENAME),
    "861000000000042": Device("861000000000042", "HZ001", "waterlog-v1", KEY, RENAME),
}
#: HZ001 reports its water level, not the sensors' battery voltage.
STATIONS = {"HZ001": frozenset({"water_level"})}


class Lookup:
    def lookup(self, identity: str) -> Device | None:
        return DEVICES.get(identity)


def waterlog(ts_s: int) -> bytes:
    rows = [(ts_s, {"water_depth": 0.5, "battery_v": 3.6})]
    return encode(load_products().get("waterlog-v1"), rows)


def up(path: str, payload: bytes, identity: str | None = None, **kw: object) -> Uplink:
    return Uplink("t", payload, NOW, None, path=path, identity=identity, **kw)  # type: ignore[arg-type]


def test_refusal_classes_are_bounded() -> None:
    assert refusal_class(UnknownDevice("unknown device 1")) == "unknown_device"
    assert refusal_class(UnknownStation("unknown station 'X' of device 1")) == "unknown_station"
    assert refusal_class(UnknownMetric("unknown metric 'y' of device 1")) == "unknown_metric"
    assert refusal_class(AuthError("bad HMAC for device 1")) == "auth"
    assert refusal_class(PayloadError("ts 5 (1970-01-01T00:00:00+00:00) is before")) == (
        "bad_timestamp"
    )
    assert refusal_class(PayloadError("ingest error: KeyError")) == "ingest_error"
    assert refusal_class(PayloadError("push body is not JSON: x")) == "bad_payload"
    assert set(REFUSALS) >= {"unknown_device", "auth", "bad_timestamp", "bad_payload"}


def test_counts_on_metrics_and_in_status(tmp_path: Path) -> None:
    ingest = NbiotIngest(
        NbiotOptions(state_dir=tmp_path),
        Lookup(),
        load_products(),
        produce=_produce,
        dead_letter=_dead_letter,
        stations=lambda: STATIONS,
    )
    now_s = NOW // 1000
    sealed = seal(KEY, "861000000000042", 1, waterlog(now_s))
    batch = [
        up("coap", waterlog(now_s), "861000000000041"),  # taken, battery_v dropped
        up("coap", waterlog(now_s), "869999999999999"),  # unregistered
        up("coap", sealed, "861000000000042"),  # taken, battery_v dropped
        up("coap", sealed, "861000000000042"),  # the same again: a duplicate
        up("udp", datagram("861000000000041", waterlog(now_s + 2 * 86_400))),  # ahead
        up("ctwing", ctwing_body("861000000000041", "x", NOW, waterlog(now_s))),  # taken
        up("ctwing", b"{}", auth_error="CTWing push with a wrong token in its URL"),
        up("onenet", b"not json"),
    ]
    asyncio.run(ingest.handle(batch))
    try:
        counts = NbiotState(ingest).counts()
        assert counts == {
            "uplinks": {
                "coap": {"taken": 2, "duplicate": 1, "refused": 1},
                "ctwing": {"taken": 1, "refused": 1},
                "onenet": {"refused": 1},
                "udp": {"refused": 1},
            },
            "refused": {"unknown_device": 1, "auth": 1, "bad_timestamp": 1, "bad_payload": 1},
            "readings_dropped": 3,
            "unknown_devices": 1,
        }
        registry = CollectorRegistry()
        registry.register(NbiotState(ingest))
        text = generate_latest(registry).decode()
        for line in (
            'vigil_nbiot_uplinks_total{outcome="duplicate",path="coap"} 1.0',
            'vigil_nbiot_uplinks_refused_total{reason="bad_timestamp"} 1.0',
            'vigil_nbiot_uplinks_refused_total{reason="unknown_station"} 0.0',
            "vigil_nbiot_readings_dropped_total 3.0",
            "vigil_nbiot_unknown_devices 1.0",
        ):
            assert line in text.splitlines(), text
        shown = format_status(_status({
            "name": "nbiot", "state": "listening", "listen": "coap=127.0.0.1:5683",
            "counters": {}, **counts, "unknown_top": {"869999999999999": 1},
            "unreported_top": {"HZ001/battery_v": 3},
        }))  # fmt: skip
        assert (
            "  nbiot   listening    coap=127.0.0.1:5683\n"
            "          uplinks: coap taken 2, duplicate 1, refused 1; ctwing taken 1, "
            "refused 1; onenet refused 1; udp refused 1\n"
            "          refused: auth 1, bad_payload 1, bad_timestamp 1, unknown_device 1\n"
            "          readings dropped (metric not reported): 3; by station/metric: "
            "HZ001/battery_v 3\n"
            "          unregistered devices: 1; 869999999999999 1\n"
        ) in shown, shown
        # What devices named (an identity, a SenML metric) is escaped for the terminal.
        odd = format_status(_status({
            "name": "nbiot", "state": "listening", "listen": "", "counters": {}, **counts,
            "unknown_top": {"86\x1b[2J": 1}, "unreported_top": {"HZ001/\x1b[31m": 2},
        }))  # fmt: skip
        assert "\x1b" not in odd and "86\\x1b[2J 1" in odd and "HZ001/\\x1b[31m 2" in odd
    finally:
        ingest._seal_counters.close()


async def _produce(readings: list[Reading | ReadingBlock]) -> None:
    pass


async def _dead_letter(raw: bytes, reason: str, source: str) -> None:
    pass


def _status(connector: dict[str, object]) -> dict[str, object]:
    return json.loads(json.dumps({
        "app_id": "vigil-test", "pid": 1, "uptime_s": 5,
        "ready": {"ready": True, "checks": {}}, "connectors": [connector],
        "readings_per_s": {"received": None, "evaluated": None},
        "lag": {"partitions": {}, "total_lag": 0},
        "rules": {"count": 1, "version": "x"}, "active_alerts": {},
        "dead_letters_last_hour": {},
    }))  # fmt: skip

"""NB-IoT admission and the YAML device file, in a running gateway (``vigil run`` with
``nbiot: {devices: devices.yaml}``), fed by aiocoap's client and httpx.

Admission against the gateway's station registry:

* a device whose entry names a station the registry does not have (``HZ404``): its
  CoAP upload is answered 4.04 and its CTWing push 200 (a push that cannot be used is
  not sent again), both dead-lettered ``unknown station 'HZ404' of device ...``;
* a device whose readings are all of metrics its station does not report (a misspelt
  rename): 4.04, dead-lettered ``unknown metric ...``;
* a device that sends its station's metric beside one the station does not report
  (``battery_v``): 2.04, the water level in the log, the battery reading not; the first
  such upload is dead-lettered once, the next ones only counted;
* after the station is added to the station file (and SIGHUP), the device of
  ``HZ404`` is accepted: the check reads the registry running now.

The YAML device file is followed without a restart (``registry_refresh_s`` is an hour,
so nothing but the SIGHUP re-reads it): a device added is accepted after SIGHUP, one
removed is refused as unknown (4.04); a broken edit is refused with one log line (per
SIGHUP that reads it) and the devices in force stay.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiocoap
import httpx
import pytest
import yaml

from connectors.mqtt.mosquitto import Mosquitto, free_port
from connectors.nbiot.products import load_products
from simulators.nbiot_fleet import ctwing_body, encode
from tests.integration.conftest import PACKS, write_settings
from tests.integration.nbiot_fixture import (
    NbiotEngine,
    coap_post,
    free_udp_port,
    log_contents,
)

pytestmark = [pytest.mark.integration]

GOOD, NO_STATION, BAD_METRIC = "861000000000011", "861000000000012", "861000000000013"
ADDED, REMOVED = "861000000000014", "861000000000015"
T0 = 1_790_000_000  # epoch seconds of the readings (2026-09)


def entry(identity: str, station: str, rename: str = "water_level") -> str:
    return (
        f'  - {{identity: "{identity}", station: {station}, product: waterlog-v1,\n'
        f"     metrics: {{water_depth: {rename}}}}}\n"
    )


def upload(step: int) -> bytes:
    """One waterlog record: water depth and the battery's voltage."""
    waterlog = load_products().get("waterlog-v1")
    return encode(waterlog, [(T0 + step * 300, {"water_depth": 0.1 * step, "battery_v": 3.6})])


def coap(port: int, identity: str, step: int) -> tuple[aiocoap.numbers.codes.Code, str]:
    resp = asyncio.run(coap_post(port, identity, upload(step)))
    return resp.code, resp.payload.decode()


def wait_for_log(log: Path, text: str, count: int = 1, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while log.read_text().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def test_admission_and_yaml_device_file(mosquitto: Mosquitto, tmp_path: Path) -> None:
    coap_port, push_port = free_udp_port(), free_port()
    devices = tmp_path / "devices.yaml"
    devices.write_text(
        "devices:\n"
        + entry(GOOD, "HZ001")
        + entry(NO_STATION, "HZ404")
        + entry(BAD_METRIC, "HZ002", rename="water_levle")
        + entry(REMOVED, "HZ003")
    )
    registry = yaml.safe_load((PACKS / "demo_stations.yaml").read_text(encoding="utf-8"))
    stations = tmp_path / "stations.yaml"
    stations.write_text(yaml.safe_dump(registry, allow_unicode=True), encoding="utf-8")
    config = write_settings(
        tmp_path,
        mosquitto.port,
        stations=str(stations),
        nbiot={
            "coap_port": coap_port,
            "push_port": push_port,
            "devices": str(devices),
            "registry_refresh_s": 3600,
        },
    )
    log = tmp_path / "engine.log"
    engine = NbiotEngine(config, log)
    try:
        engine.start()
        assert engine.proc is not None
        # Admission.
        assert coap(coap_port, GOOD, 1)[0] == aiocoap.CHANGED
        assert coap(coap_port, GOOD, 2)[0] == aiocoap.CHANGED
        code, why = coap(coap_port, NO_STATION, 1)
        assert (code, why) == (
            aiocoap.NOT_FOUND,
            f"unknown station 'HZ404' of device {NO_STATION}: its registry entry names it, "
            "the station registry does not have it",
        )
        body = ctwing_body(NO_STATION, "ctw-12", (T0 + 600) * 1000, upload(2))
        r = httpx.post(f"http://127.0.0.1:{push_port}/ctwing", content=body, timeout=60)
        assert r.status_code == 200, r.text
        code, why = coap(coap_port, BAD_METRIC, 1)
        assert code == aiocoap.NOT_FOUND
        assert why.startswith(f"unknown metric 'water_levle' of device {BAD_METRIC}: station "
                              "HZ002 reports rainfall, water_level"), why  # fmt: skip
        # The YAML device file: a device added, one removed, on SIGHUP only.
        assert coap(coap_port, ADDED, 1)[0] == aiocoap.NOT_FOUND
        assert coap(coap_port, REMOVED, 1)[0] == aiocoap.CHANGED
        devices.write_text(
            "devices:\n"
            + entry(GOOD, "HZ001")
            + entry(NO_STATION, "HZ404")
            + entry(BAD_METRIC, "HZ002", rename="water_levle")
            + entry(ADDED, "HZ002")
        )
        assert coap(coap_port, ADDED, 2)[0] == aiocoap.NOT_FOUND  # not read yet
        engine.proc.send_signal(signal.SIGHUP)
        wait_for_log(log, f"added: {ADDED}; removed: {REMOVED}")
        assert coap(coap_port, ADDED, 3)[0] == aiocoap.CHANGED
        assert coap(coap_port, REMOVED, 2) == (aiocoap.NOT_FOUND, f"unknown device {REMOVED}")
        # A broken edit: refused with one line, the devices in force stay.
        devices.write_text("devices:\n  - {identity: 8610, station: [unclosed\n")
        engine.proc.send_signal(signal.SIGHUP)
        wait_for_log(log, "NB-IoT device file not reloaded")
        assert coap(coap_port, ADDED, 4)[0] == aiocoap.CHANGED
        assert coap(coap_port, REMOVED, 3)[0] == aiocoap.NOT_FOUND
        assert log.read_text().count("NB-IoT device file not reloaded") == 1
        # The station appears in the station registry: its device is taken from then on.
        hz404 = dict(registry["stations"][0], id="HZ404", name="Demo gauge 404")
        registry["stations"].append(hz404)
        stations.write_text(yaml.safe_dump(registry, allow_unicode=True), encoding="utf-8")
        engine.proc.send_signal(signal.SIGHUP)
        wait_for_log(log, "4 stations (were 3)")
        assert coap(coap_port, NO_STATION, 3)[0] == aiocoap.CHANGED
        assert engine.terminate() == 0, log.read_text()[-3000:]
    finally:
        engine.kill()
    # Once more: the station file's SIGHUP re-read the device file, still broken.
    text = log.read_text()
    assert text.count("NB-IoT device file not reloaded") == 2, text[-3000:]
    logged, reasons, _ = log_contents(tmp_path / "data")
    level = {(s, t) for s, m, t in logged if m == "water_level"}
    assert {("HZ001", (T0 + 300) * 1000), ("HZ001", (T0 + 600) * 1000)} <= level
    assert ("HZ002", (T0 + 900) * 1000) in level  # the device added, after SIGHUP
    assert ("HZ404", (T0 + 900) * 1000) in level  # its station added, after SIGHUP
    assert ("HZ404", (T0 + 300) * 1000) not in level  # before: refused
    assert ("HZ404", (T0 + 600) * 1000) not in level  # the push, likewise
    assert not {r for r in logged if r[1] not in ("water_level", "rainfall")}, logged

    def dead(start: str) -> int:
        return sum(n for r, n in reasons.items() if r.startswith(start))

    assert dead(f"unknown station 'HZ404' of device {NO_STATION}") == 2  # CoAP and push
    assert dead(f"unknown metric 'water_levle' of device {BAD_METRIC}") == 1
    # battery_v beside taken readings: dead-lettered the first time per station, then
    # only counted (GOOD's second upload); HZ002's was dead-lettered already, with
    # BAD_METRIC's upload, so ADDED's leave none.
    battery = [r for r in reasons if r.startswith("unknown metric 'battery_v'")]
    assert sum(reasons[r] for r in battery) == 3, battery
    assert {r.split(": station ")[1].split()[0] for r in battery} == {"HZ001", "HZ003", "HZ404"}
    assert all("not ingested, the uplink's other readings are" in r for r in battery)
    assert "unknown metric 'battery_v'" in next(r for r in reasons if "water_levle" in r)
    assert dead(f"unknown device {ADDED}") == 2
    assert dead(f"unknown device {REMOVED}") == 2

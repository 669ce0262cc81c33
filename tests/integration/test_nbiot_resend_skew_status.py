"""NB-IoT in a running gateway (``vigil run`` with ``nbiot:``), fed by aiocoap's client,
a raw UDP socket and httpx posting CTWing and OneNET bodies:

* a sealed upload refused whole (its device's metric is misspelt in the device file, so
  its station reports none of its readings) is answered 4.04 each time it is sent, not
  2.04 as a duplicate of readings that exist only as a dead letter; sent again after the
  device file is fixed (SIGHUP), it is taken (2.04, its readings in the log), and only
  then is a resend a duplicate;
* readings stamped further ahead of the gateway's clock than ``ingest.max_clock_skew_s``
  (an hour here; two hours ahead) are dead-lettered with MQTT's reason on CoAP (4.00),
  raw UDP (NAK), CTWing and OneNET (200: sending them again would not help);
* ``/metrics`` and ``vigil status`` show the NB-IoT counts: uplinks by path and outcome,
  refused uplinks by reason, readings dropped for a metric the station does not report.

The scenario runs once (``run``) and records what the senders were answered; each test
checks its part.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiocoap
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.mqtt.mosquitto import Mosquitto, free_port
from connectors.nbiot.products import load_products
from connectors.nbiot.seal import seal
from connectors.nbiot.udp import ACK, NAK
from simulators.nbiot_fleet import ctwing_body, datagram, encode, onenet_body
from tests.integration.conftest import write_settings
from tests.integration.nbiot_fixture import (
    NbiotEngine,
    coap_post,
    free_udp_port,
    log_contents,
    udp_send,
)

pytestmark = [pytest.mark.integration]

SEALED, PLAIN, UNKNOWN = "861000000000051", "861000000000052", "869999999999951"
KEY = bytes(range(32, 48))
ONENET_TOKEN = "on-token-0051"
SKEW_S = 3600


def devices_yaml(rename: str) -> str:
    return (
        "devices:\n"
        f'  - {{identity: "{SEALED}", station: HZ001, product: waterlog-v1, '
        f"key_hex: {KEY.hex()}, metrics: {{water_depth: {rename}}}}}\n"
        f'  - {{identity: "{PLAIN}", station: HZ002, product: waterlog-v1, '
        "metrics: {water_depth: water_level}}\n"
    )


def waterlog(ts_s: int, depth: float) -> bytes:
    rows = [(ts_s, {"water_depth": depth, "battery_v": 3.6})]
    return encode(load_products().get("waterlog-v1"), rows)


@dataclass
class Run:
    now_s: int
    #: What the sealed upload was answered, each time it was sent.
    sealed: list[aiocoap.numbers.codes.Code] = field(default_factory=list)
    #: What the uplinks stamped two hours ahead were answered, by path.
    ahead: dict[str, object] = field(default_factory=dict)
    status: str = ""
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    logged: set[tuple[str, str, int]] = field(default_factory=set)
    reasons: Counter[str] = field(default_factory=Counter)


def wait_for_log(log: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("nbiot-gaps")
    with Mosquitto() as broker:
        return _scenario(broker, tmp)


def _scenario(mosquitto: Mosquitto, tmp: Path) -> Run:
    coap_port, udp_port, push_port, web_port = (
        free_udp_port(), free_udp_port(), free_port(), free_port()
    )  # fmt: skip
    devices = tmp / "devices.yaml"
    devices.write_text(devices_yaml("water_levle"))  # misspelt: HZ001 reports no such metric
    os.environ["TEST_GAPS_ONENET_TOKEN"] = ONENET_TOKEN
    config = write_settings(
        tmp,
        mosquitto.port,
        web_port=web_port,
        ingest={"max_clock_skew_s": SKEW_S},
        nbiot={
            "coap_port": coap_port,
            "udp_port": udp_port,
            "push_port": push_port,
            "devices": str(devices),
            "registry_refresh_s": 3600,
            "onenet_token_env": "TEST_GAPS_ONENET_TOKEN",
        },
    )
    log = tmp / "engine.log"
    engine = NbiotEngine(config, log)
    now_s = int(time.time())
    out = Run(now_s)
    try:
        engine.start()
        assert engine.proc is not None
        # The sealed upload: refused whole, sent again, the device file fixed, again.
        payload = seal(KEY, SEALED, 1, waterlog(now_s - 600, 0.42))
        for _ in range(2):
            out.sealed.append(asyncio.run(coap_post(coap_port, SEALED, payload)).code)
        devices.write_text(devices_yaml("water_level"))
        engine.proc.send_signal(signal.SIGHUP)
        wait_for_log(log, "reloaded: 2 devices (were 2")
        for _ in range(2):
            out.sealed.append(asyncio.run(coap_post(coap_port, SEALED, payload)).code)
        # Two hours ahead of the gateway's clock, on every path.
        ahead_s = now_s + 2 * SKEW_S
        binary = waterlog(ahead_s, 0.77)
        out.ahead["coap"] = asyncio.run(coap_post(coap_port, PLAIN, binary)).code
        out.ahead["udp"] = udp_send(udp_port, datagram(PLAIN, binary))
        push = httpx.Client(base_url=f"http://127.0.0.1:{push_port}", timeout=60)
        body = ctwing_body(PLAIN, "ctw-52", now_s * 1000, binary)
        out.ahead["ctwing"] = push.post("/ctwing", content=body).status_code
        msg = {"at": ahead_s * 1000, "imei": PLAIN, "type": 1, "ds_id": "3300_0_5700",
               "value": 0.77, "dev_id": 52}  # fmt: skip
        onenet = push.post("/onenet", content=onenet_body(ONENET_TOKEN, msg))
        out.ahead["onenet"] = onenet.status_code
        # An unregistered device, and the readings of now: taken, battery_v dropped.
        asyncio.run(coap_post(coap_port, UNKNOWN, waterlog(now_s, 0.1)))
        assert udp_send(udp_port, datagram(PLAIN, waterlog(now_s, 0.33))) == bytes([ACK])
        # What the operator sees.
        status = subprocess.run(
            [sys.executable, "-m", "engine.tools.cli", "status", "--config", str(config)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        out.status = status.stdout + status.stderr
        scrape = httpx.get(f"http://127.0.0.1:{web_port}/metrics", timeout=30).text
        for family in text_string_to_metric_families(scrape):
            for s in family.samples:
                if s.name.startswith("vigil_nbiot_"):
                    out.metrics[(s.name, tuple(sorted(s.labels.items())))] = s.value
        assert engine.terminate() == 0, log.read_text()[-3000:]
    finally:
        engine.kill()
    out.logged, out.reasons, _ = log_contents(tmp / "data")
    return out


def test_a_sealed_upload_refused_whole_is_taken_when_sent_again_after_the_fix(run: Run) -> None:
    assert run.sealed == [aiocoap.NOT_FOUND, aiocoap.NOT_FOUND, aiocoap.CHANGED, aiocoap.CHANGED]
    assert ("HZ001", "water_level", (run.now_s - 600) * 1000) in run.logged
    refused = [r for r in run.reasons if r.startswith(f"unknown metric 'water_levle' of device "
                                                      f"{SEALED}")]  # fmt: skip
    assert sum(run.reasons[r] for r in refused) == 2, run.reasons


def test_readings_too_far_ahead_are_dead_lettered_on_every_path(run: Run) -> None:
    assert run.ahead == {
        "coap": aiocoap.BAD_REQUEST,
        "udp": bytes([NAK]),
        "ctwing": 200,
        "onenet": 200,
    }
    ahead_ms = (run.now_s + 2 * SKEW_S) * 1000
    assert not {r for r in run.logged if r[2] == ahead_ms}, run.logged
    skewed = [r for r in run.reasons if r.startswith(f"ts {ahead_ms} (")]
    assert sum(run.reasons[r] for r in skewed) == 4, run.reasons
    assert all(
        f"is more than {SKEW_S} s ahead of the gateway's clock" in r
        and r.endswith("; ingest.max_clock_skew_s)")
        for r in skewed
    ), skewed
    assert ("HZ002", "water_level", run.now_s * 1000) in run.logged  # the current one


def test_metrics_and_status_show_the_nbiot_counts(run: Run) -> None:
    def value(name: str, **labels: str) -> float:
        return run.metrics[(name, tuple(sorted(labels.items())))]

    assert value("vigil_nbiot_uplinks_total", path="coap", outcome="refused") == 4
    assert value("vigil_nbiot_uplinks_total", path="coap", outcome="taken") == 1
    assert value("vigil_nbiot_uplinks_total", path="coap", outcome="duplicate") == 1
    assert value("vigil_nbiot_uplinks_total", path="udp", outcome="taken") == 1
    assert value("vigil_nbiot_uplinks_refused_total", reason="unknown_metric") == 2
    assert value("vigil_nbiot_uplinks_refused_total", reason="bad_timestamp") == 4
    assert value("vigil_nbiot_uplinks_refused_total", reason="unknown_device") == 1
    assert value("vigil_nbiot_readings_dropped_total") == 2  # battery_v, HZ001 and HZ002
    assert value("vigil_nbiot_unknown_devices") == 1
    for line in (
        "  nbiot   listening    coap=127.0.0.1:",
        "          uplinks: coap taken 1, duplicate 1, refused 4; ctwing refused 1; "
        "onenet refused 1; udp taken 1, refused 1",
        "          refused: bad_timestamp 4, unknown_device 1, unknown_metric 2",
        "          readings dropped (metric not reported): 2; by station/metric: ",
        f"          unregistered devices: 1; {UNKNOWN} 1",
    ):
        assert line in run.status, run.status

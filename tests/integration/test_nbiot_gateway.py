"""NB-IoT end to end: a real gateway (``vigil run`` with ``nbiot:``) fed by aiocoap's
client, raw UDP sockets and real HTTP clients posting CTWing and OneNET bodies.

* Three gauges rise through their flood levels; their water levels come from NB-IoT
  waterlogging sensors as store-and-forward backlogs (an hour of 5-minute readings per
  upload), one gauge's whole day arriving at the end (coverage returned) while the others
  are current: every reading reaches the telemetry log.
* A SIGKILL while a device uploads loses nothing the gateway confirmed (2.04).
* Faults go to the dead-letter topic with their reasons: a bad HMAC, a replayed counter,
  an unregistered device, a truncated datagram, a OneNET push with a bad signature and
  a CTWing push with a wrong token; a sealed payload sent again is confirmed, not
  ingested twice. OneNET's URL verification echoes ``msg`` only for a good signature.
* The stations list the metrics their devices feed (HZ002's ``road_water_depth`` from
  OneNET, HZ001's ``online``) but not the sensors' ``battery_v``: those readings are
  refused, dead-lettered once per station (and gateway process), never in the log.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiocoap
import httpx
import pytest
import yaml

from connectors.mqtt.mosquitto import Mosquitto, free_port
from connectors.nbiot.platforms import onenet_signature
from connectors.nbiot.products import load_products
from connectors.nbiot.seal import seal
from connectors.nbiot.udp import ACK, NAK
from simulators.nbiot_fleet import ctwing_body, datagram, encode, onenet_body
from tests.integration.conftest import PACKS, write_settings
from tests.integration.nbiot_fixture import (
    NbiotEngine,
    free_udp_port,
    log_contents,
    udp_send,
)

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
STATIONS, RULES = PACKS / "demo_stations.yaml", PACKS / "flood.yaml"
LATENESS_MS = 0
STEP_S = 300
K1, K2 = bytes(range(16)), bytes(range(16, 32))
CTWING_TOKEN, ONENET_TOKEN = "ct-secret-0001", "on-token-0001"
WAVES = {"HZ001": (3.0, 5.2), "HZ002": (2.0, 4.3), "HZ003": (1.5, 3.6)}
DEVICES = f"""
devices:
  - {{identity: "861000000000001", station: HZ003, product: waterlog-v1, key_hex: {K1.hex()},
     metrics: {{water_depth: water_level}}}}
  - {{identity: "861000000000002", station: HZ002, product: waterlog-v1, key_hex: {K2.hex()},
     metrics: {{water_depth: water_level}}}}
  - {{identity: "861000000000003", station: HZ001, product: waterlog-v1,
     metrics: {{water_depth: water_level}}, aliases: [ctw-0003]}}
  - {{identity: "861000000000004", station: HZ001, product: senml}}
  - {{identity: "861000000000005", station: HZ002, product: waterlog-v1,
     metrics: {{water_depth: road_water_depth}}}}
"""


def wave(station: str, start_s: int, hours: float) -> list[tuple[int, float]]:
    """A flood wave at 5-minute steps: base -> peak at mid-span -> base."""
    base, peak = WAVES[station]
    n = int(hours * 3600 / STEP_S)
    return [
        (start_s + i * STEP_S, round(base + (peak - base) * (1 - abs(2 * i / n - 1)), 3))
        for i in range(n)
    ]


def hourly(rows: list[tuple[int, float]]) -> list[list[tuple[int, float]]]:
    return [rows[i : i + 12] for i in range(0, len(rows), 12)]


class Coap:
    def __init__(self, port: int) -> None:
        self.port = port

    async def __aenter__(self) -> Coap:
        self.ctx = await aiocoap.Context.create_client_context()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ctx.shutdown()

    async def post(self, path: str, payload: bytes, fmt: int | None = None) -> aiocoap.Message:
        req = aiocoap.Message(
            code=aiocoap.POST, uri=f"coap://127.0.0.1:{self.port}/{path}", payload=payload
        )
        if fmt is not None:
            req.opt.content_format = fmt
        return await asyncio.wait_for(self.ctx.request(req).response, 60)


@dataclass
class Run:
    tmp: Path
    start_s: int
    hours: float
    confirmed: set[tuple[str, str, int]]
    logged: set[tuple[str, str, int]]
    reasons: Counter[str]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The whole scenario once: both tests below read what it left."""
    with Mosquitto() as broker:
        return _scenario(broker, tmp_path_factory.mktemp("nbiot"))


def _scenario(mosquitto: Mosquitto, tmp_path: Path) -> Run:
    products = load_products()
    waterlog = products.get("waterlog-v1")
    coap_port, udp_port, push_port = free_udp_port(), free_udp_port(), free_port()
    devices = tmp_path / "devices.yaml"
    devices.write_text(DEVICES)
    registry = yaml.safe_load(STATIONS.read_text(encoding="utf-8"))
    extra = {"HZ001": {"online": "/"}, "HZ002": {"road_water_depth": "m"}}
    for station in registry["stations"]:
        station["metrics"].update(extra.get(station["id"], {}))
    stations = tmp_path / "stations.yaml"
    stations.write_text(yaml.safe_dump(registry, allow_unicode=True), encoding="utf-8")
    config = write_settings(
        tmp_path,
        mosquitto.port,
        stations=str(stations),
        partitions=2,
        lateness_ms=LATENESS_MS,
        nbiot={
            "coap_port": coap_port,
            "udp_port": udp_port,
            "push_port": push_port,
            "devices": str(devices),
            "ctwing_token_env": "TEST_CTWING_TOKEN",
            "onenet_token_env": "TEST_ONENET_TOKEN",
        },
    )
    os.environ.update(TEST_CTWING_TOKEN=CTWING_TOKEN, TEST_ONENET_TOKEN=ONENET_TOKEN)
    engine = NbiotEngine(config, tmp_path / "engine.log")
    hours = 12.0
    start_s = (int(time.time()) - int(hours * 3600) - 1800) // STEP_S * STEP_S
    confirmed: set[tuple[str, str, int]] = set()
    sent: set[tuple[str, str, int]] = set()

    def rows(readings: list[tuple[int, float]]) -> list[tuple[int, dict[str, float]]]:
        return [(t, {"water_depth": v, "battery_v": 3.6}) for t, v in readings]

    async def current_devices() -> None:
        """HZ001 over CTWing, HZ002 over raw UDP: each hour's backlog as it happens."""
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{push_port}") as http:
            for i, (a, b) in enumerate(
                zip(
                    hourly(wave("HZ001", start_s, hours)),
                    hourly(wave("HZ002", start_s, hours)),
                    strict=True,
                )
            ):
                body = ctwing_body(
                    "861000000000003", "ctw-0003", a[-1][0] * 1000, encode(waterlog, rows(a)), i
                )
                r = await http.post(f"/ctwing/{CTWING_TOKEN}", content=body)
                assert r.status_code == 200, r.text
                confirmed.update(("HZ001", "water_level", t * 1000) for t, _ in a)
                sealed = seal(K2, "861000000000002", i + 1, encode(waterlog, rows(b)))
                reply = await asyncio.to_thread(
                    udp_send, udp_port, datagram("861000000000002", sealed)
                )
                assert reply == bytes([ACK]) + (i + 1).to_bytes(4, "big")
                confirmed.update(("HZ002", "water_level", t * 1000) for t, _ in b)

    async def backlog_device(kill_after: int | None) -> int:
        """HZ003: the whole span at once, an hour per confirmable request."""
        counter = 0
        async with Coap(coap_port) as coap:
            for chunk in hourly(wave("HZ003", start_s, hours)):
                counter += 1
                payload = seal(K1, "861000000000001", counter, encode(waterlog, rows(chunk)))
                sent.update(("HZ003", "water_level", t * 1000) for t, _ in chunk)
                if kill_after is not None and counter > kill_after:
                    engine.kill()  # mid-stream: the request in flight is not confirmed
                    return counter - 1
                resp = await coap.post("nb/861000000000001", payload)
                assert resp.code == aiocoap.CHANGED, resp.payload
                confirmed.update(("HZ003", "water_level", t * 1000) for t, _ in chunk)
        return counter

    try:
        engine.start()
        asyncio.run(current_devices())
        # SIGKILL after 5 confirmed uploads; everything confirmed must be in the log.
        done = asyncio.run(backlog_device(kill_after=5))
        assert done == 5
        logged, _, _ = log_contents(tmp_path / "data")
        assert confirmed <= logged, sorted(confirmed - logged)[:5]
        engine.start()
        # The device starts over with its backlog (it never heard back for upload 6):
        # uploads 1-5 again are replays of counters 1-5 -> dead-lettered as replays,
        # except 5, the last accepted, which is a duplicate: confirmed, not ingested.
        asyncio.run(faults_and_rest(coap_port, udp_port, push_port, waterlog, start_s, hours))
        for _ in range(10):
            time.sleep(3)
            assert engine.terminate() == 0, (tmp_path / "engine.log").read_text()[-3000:]
            logged, reasons, finished = log_contents(tmp_path / "data")
            if finished:
                break
            engine.start()
        else:
            pytest.fail("the gateway did not commit all it consumed")
    finally:
        engine.kill()
    return Run(tmp_path, start_s, hours, confirmed, logged, reasons)


def test_nbiot_paths_faults_and_sigkill(run: Run) -> None:
    """Every path's readings reach the log, nothing confirmed is lost across the
    SIGKILL, and each fault is dead-lettered with its reason."""
    start_s, hours, logged, reasons = run.start_s, run.hours, run.logged, run.reasons
    confirmed = run.confirmed
    everything = {(s, "water_level", t * 1000) for s in WAVES for t, _ in wave(s, start_s, hours)}
    assert confirmed <= logged
    assert everything <= logged  # every reading reached the log in the end
    assert ("HZ002", "road_water_depth", start_s * 1000) in logged  # OneNET ds_id
    assert ("HZ001", "rainfall", start_s * 1000) in logged  # SenML JSON
    assert ("HZ001", "rainfall", (start_s + 60) * 1000) in logged  # SenML CBOR
    assert ("HZ001", "online", start_s * 1000) in logged  # CTWing online message
    assert not {r for r in logged if r[1] == "battery_v"}  # no station reports it
    refused = [r for r in reasons if r.startswith("unknown metric 'battery_v'")]
    # Once per station and gateway process (the count starts again at a restart).
    assert {r.split(": station ")[1].split()[0] for r in refused} == set(WAVES), refused
    text = "\n".join(reasons)
    for expected in (
        "bad HMAC for device 861000000000001",
        "replayed counter 1 for device 861000000000001 (last 12)",
        "unknown device 869999999999999",
        "is not 1 prefix bytes and whole records of 8",
        "OneNET msg_signature does not verify",
        "CTWing push with a wrong token in its URL",
    ):
        assert expected in text, text


async def faults_and_rest(
    coap_port: int, udp_port: int, push_port: int, waterlog: object, start_s: int, hours: float
) -> None:
    from connectors.nbiot.products import Product

    assert isinstance(waterlog, Product)

    def rows(readings: list[tuple[int, float]]) -> list[tuple[int, dict[str, float]]]:
        return [(t, {"water_depth": v, "battery_v": 3.6}) for t, v in readings]

    chunks = hourly(wave("HZ003", start_s, hours))
    async with Coap(coap_port) as coap:
        # Upload 5 again, as sent before the kill: a duplicate, confirmed.
        again = seal(K1, "861000000000001", 5, encode(waterlog, rows(chunks[4])))
        assert (await coap.post("nb/861000000000001", again)).code == aiocoap.CHANGED
        for counter in range(6, len(chunks) + 1):
            payload = seal(
                K1, "861000000000001", counter, encode(waterlog, rows(chunks[counter - 1]))
            )
            resp = await coap.post("nb/861000000000001", payload)
            assert resp.code == aiocoap.CHANGED, resp.payload
        # A replay of counter 1, a bad tag, an unregistered device.
        old = seal(K1, "861000000000001", 1, encode(waterlog, rows(chunks[0])))
        assert (await coap.post("nb/861000000000001", old)).code == aiocoap.UNAUTHORIZED
        bad = bytearray(seal(K1, "861000000000001", 99, encode(waterlog, rows(chunks[0]))))
        bad[-1] ^= 0xFF
        assert (await coap.post("nb/861000000000001", bytes(bad))).code == aiocoap.UNAUTHORIZED
        unknown = await coap.post("nb/869999999999999", encode(waterlog, rows(chunks[0][:1])))
        assert unknown.code == aiocoap.NOT_FOUND
        # SenML JSON to /nb (identity in the base name), and SenML CBOR to /nb/<id>.
        pack = [
            {"bn": "urn:imei:861000000000004:", "bt": start_s, "n": "rainfall", "u": "mm", "v": 1.5}
        ]
        assert (await coap.post("nb", json.dumps(pack).encode(), 110)).code == aiocoap.CHANGED
        import cbor2

        cb = cbor2.dumps([{-3: start_s + 60, 0: "rainfall", 2: 0.5}])
        assert (await coap.post("nb/861000000000004", cb, 112)).code == aiocoap.CHANGED
    # A truncated datagram: answered NAK, dead-lettered.
    good = datagram("861000000000003", encode(waterlog, rows(chunks[0][:1])))
    assert (await asyncio.to_thread(udp_send, udp_port, good[:-3]))[:1] == bytes([NAK])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{push_port}") as http:
        # OneNET URL verification: echo msg for a good signature only.
        sig = onenet_signature(ONENET_TOKEN, "n0nce", "hello")
        r = await http.get("/onenet", params={"msg": "hello", "nonce": "n0nce", "signature": sig})
        assert (r.status_code, r.text) == (200, "hello")
        r = await http.get(
            "/onenet", params={"msg": "hello", "nonce": "n0nce", "signature": "AAAA"}
        )
        assert r.status_code == 403
        msg = {"at": start_s * 1000, "imei": "861000000000005", "type": 1, "ds_id": "3300_0_5700",
               "value": 0.12, "dev_id": 5}  # fmt: skip
        assert (
            await http.post("/onenet", content=onenet_body(ONENET_TOKEN, msg))
        ).status_code == 200
        forged = onenet_body("not-the-token", msg)
        assert (await http.post("/onenet", content=forged)).status_code == 403
        online = {"messageType": "deviceOnlineOfflineReport", "timestamp": start_s * 1000,
                  "deviceId": "ctw-0003", "IMEI": "861000000000003", "eventType": 1}  # fmt: skip
        r = await http.post(f"/ctwing/{CTWING_TOKEN}", content=json.dumps(online).encode())
        assert r.status_code == 200
        r = await http.post("/ctwing/wrong", content=json.dumps(online).encode())
        assert r.status_code == 403

"""NB-IoT devices from the registry store, in a running gateway (``vigil run`` with
``nbiot:`` and no device file: the store in ``data_dir/registry``).

The store holds a million devices when the gateway starts; the gateway's lookup cache
holds a thousand. Real clients (aiocoap, httpx) send uplinks of three thousand devices
drawn across the million, and CTWing pushes: every one is confirmed and in the
telemetry log. While the gateway runs, ``vigil registry import`` (another process; the
gateway never takes the store's lock) registers two devices, one with a key, and
``vigil registry remove`` removes one: after SIGHUP the new devices' uplinks (a sealed
CoAP upload, a CTWing push) are accepted and the removed device's are refused, without a
restart. Before the SIGHUP (the settings' refresh interval is an hour, so nothing else
catches up) the new device is still unknown: the SIGHUP is what made it known.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiocoap
import httpx
import pytest
from rocksdict import WriteBatch

from connectors.mqtt.mosquitto import Mosquitto, free_port
from connectors.nbiot.products import load_products
from connectors.nbiot.seal import seal
from rules.store import make_imei
from rules.store.db import DEVICE, device_record, fast_writes, open_writer, write_meta
from simulators.nbiot_fleet import ctwing_body, encode
from tests.integration.conftest import write_settings
from tests.integration.nbiot_fixture import NbiotEngine, free_udp_port, log_contents

pytestmark = [pytest.mark.integration]

N_DEVICES = 1_000_000
CACHE = 1_000
SAMPLE = 3_000
STATIONS = ("HZ001", "HZ002", "HZ003")
RENAME = {"water_depth": "water_level"}
KEY = bytes(range(32, 48))
NEW_COAP, NEW_PUSH = make_imei(86200000, 1), make_imei(86200000, 2)


def bulk_imei(i: int) -> str:
    return make_imei(86100000 + i // 1_000_000, i % 1_000_000)


def station_of(i: int) -> str:
    return STATIONS[i % len(STATIONS)]


def fill_store(store: Path, n: int) -> None:
    """``n`` devices written straight into the store, in the records ``vigil registry
    import`` writes (an import of a million rows takes minutes on a busy machine)."""
    db = open_writer(store)
    try:
        batch = WriteBatch(raw_mode=True)
        for i in range(n):
            record = device_record(station_of(i), "waterlog-v1", None, RENAME, 1, i + 2)
            batch.put(DEVICE + bulk_imei(i).encode(), record)
            if i % 50_000 == 49_999:
                db.write(batch, fast_writes())
                batch = WriteBatch(raw_mode=True)
        write_meta(batch, "devices", n)
        write_meta(batch, "imports", 1)
        db.write(batch, fast_writes())
        db.flush()
    finally:
        db.close()


def registry_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "engine.tools.cli", "registry", *args, "--config", str(config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_registry_store_devices_live_without_restart(tmp_path: Path) -> None:
    waterlog = load_products().get("waterlog-v1")
    data = tmp_path / "data"
    fill_store(data / "registry", N_DEVICES)
    coap_port, push_port = free_udp_port(), free_port()
    now_s = int(time.time()) // 60 * 60
    base_s = now_s - 6 * 3600  # readings of the last hours, one second apart
    rng = random.Random(15)
    sample = rng.sample(range(N_DEVICES), SAMPLE)
    expected: set[tuple[str, str, int]] = set()

    def payload(ts_s: int, depth: float = 0.5) -> bytes:
        return encode(waterlog, [(ts_s, {"water_depth": depth, "battery_v": 3.6})])

    async def coap_post(ctx: aiocoap.Context, identity: str, body: bytes) -> aiocoap.Message:
        req = aiocoap.Message(
            code=aiocoap.POST, uri=f"coap://127.0.0.1:{coap_port}/nb/{identity}", payload=body
        )
        return await asyncio.wait_for(ctx.request(req).response, 120)

    async def fleet() -> None:
        """Uplinks of the sampled devices (three times the cache), 64 in flight."""
        ctx = await aiocoap.Context.create_client_context()
        gate = asyncio.Semaphore(64)

        async def one(k: int, i: int) -> None:
            async with gate:
                resp = await coap_post(ctx, bulk_imei(i), payload(base_s + k))
            assert resp.code == aiocoap.CHANGED, (bulk_imei(i), resp.code, resp.payload)
            expected.add((station_of(i), "water_level", (base_s + k) * 1000))

        try:
            await asyncio.gather(*(one(k, i) for k, i in enumerate(sample)))
        finally:
            await ctx.shutdown()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{push_port}") as http:
            for k, i in enumerate(sample[:20]):
                ts_s = base_s + SAMPLE + k
                body = ctwing_body(bulk_imei(i), f"ctw-{i}", ts_s * 1000, payload(ts_s), k)
                r = await http.post("/ctwing", content=body)
                assert r.status_code == 200, r.text
                expected.add((station_of(i), "water_level", ts_s * 1000))

    async def new_device_refused(ts_s: int) -> None:
        ctx = await aiocoap.Context.create_client_context()
        try:
            resp = await coap_post(ctx, NEW_COAP, seal(KEY, NEW_COAP, 1, payload(ts_s)))
            assert resp.code == aiocoap.NOT_FOUND, (resp.code, resp.payload)
        finally:
            await ctx.shutdown()

    async def after_sighup() -> None:
        """The registered device is accepted (its first sealed upload, then its second),
        the pushed one too; the removed one is refused."""
        ctx = await aiocoap.Context.create_client_context()
        try:
            deadline = time.monotonic() + 120
            counter = 0
            while True:  # the catch-up runs on the gateway's next loop turn
                counter += 1
                ts_s = now_s - 600 + counter
                sealed = seal(KEY, NEW_COAP, counter, payload(ts_s, 0.8))
                resp = await coap_post(ctx, NEW_COAP, sealed)
                if resp.code == aiocoap.CHANGED:
                    expected.add(("HZ002", "water_level", ts_s * 1000))
                    break
                assert resp.code == aiocoap.NOT_FOUND, (resp.code, resp.payload)
                assert time.monotonic() < deadline, "the new device was never accepted"
                await asyncio.sleep(0.2)
            counter += 1
            sealed = seal(KEY, NEW_COAP, counter, payload(now_s - 300, 0.9))
            assert (await coap_post(ctx, NEW_COAP, sealed)).code == aiocoap.CHANGED
            expected.add(("HZ002", "water_level", (now_s - 300) * 1000))
            gone = await coap_post(ctx, bulk_imei(sample[0]), payload(now_s - 200))
            assert gone.code == aiocoap.NOT_FOUND, (gone.code, gone.payload)
        finally:
            await ctx.shutdown()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{push_port}") as http:
            body = ctwing_body(NEW_PUSH, "ctw-new", (now_s - 100) * 1000, payload(now_s - 100))
            assert (await http.post("/ctwing", content=body)).status_code == 200
            expected.add(("HZ003", "water_level", (now_s - 100) * 1000))

    with Mosquitto() as broker:
        config = write_settings(
            tmp_path,
            broker.port,
            nbiot={
                "coap_port": coap_port,
                "push_port": push_port,
                "registry_cache": CACHE,
                "registry_refresh_s": 3600,
            },
        )
        engine = NbiotEngine(config, tmp_path / "engine.log")
        try:
            engine.start(timeout=600)  # the store it opens holds a million devices
            asyncio.run(fleet())
            asyncio.run(new_device_refused(now_s - 700))

            csv = tmp_path / "new.csv"
            csv.write_text(
                "identity,station,product,key,metrics\n"
                f"{NEW_COAP},HZ002,waterlog-v1,{KEY.hex()},water_depth:water_level\n"
                f"{NEW_PUSH},HZ003,waterlog-v1,,water_depth:water_level\n"
            )
            done = registry_cli(config, "import", str(csv))
            assert done.returncode == 0, done.stderr
            assert "2 added" in done.stdout, done.stdout
            gone = registry_cli(config, "remove", bulk_imei(sample[0]))
            assert gone.returncode == 0, gone.stderr
            asyncio.run(new_device_refused(now_s - 650))  # not caught up yet

            assert engine.proc is not None
            engine.proc.send_signal(signal.SIGHUP)
            asyncio.run(after_sighup())
            assert engine.terminate() == 0, (tmp_path / "engine.log").read_text()[-3000:]
        finally:
            engine.kill()

    logged, reasons, _ = log_contents(data)
    missing = expected - logged
    assert not missing, (len(missing), sorted(missing)[:5])

    def dead(identity: str) -> int:
        return sum(n for r, n in reasons.items() if f"unknown device {identity}" in r)

    assert dead(NEW_COAP) >= 2  # before the import, and after it before the SIGHUP
    assert dead(bulk_imei(sample[0])) == 1  # after its removal
    assert dead(NEW_PUSH) == 0

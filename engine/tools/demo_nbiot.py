"""``vigil demo --nbiot``: a cloudburst over three road waterlogging points, whose NB-IoT
depth sensors report through the gateway's CoAP server and China Telecom's CTWing
platform, with the devices in the registry store.

It starts mosquitto (``vigil run`` always runs MQTT ingest) and the gateway on a
temporary data directory with ``nbiot:`` (CoAP, the push receiver, devices from the
registry store in ``data_dir/registry``), after ``vigil registry import`` of two of the
sensors. Three hours of 5-minute readings are replayed in a quarter of ``--duration``:

- WL01 (an underpass) over CoAP, its payloads sealed with its per-device key
  (HMAC and counter): the water rises past 30 cm (orange) and drains away;
- WL03 (a culvert) through CTWing: each uplink reaches the gateway as the platform's
  ``dataReport`` push to ``/ctwing/<token>``; the water passes 15 cm (yellow);
- WL02 (a crossroads), a sensor installed during the storm: it is imported with
  ``vigil registry import`` while the gateway runs and is accepted from then on,
  without a restart; its crossroads stays nearly dry;
- a device nobody registered: answered 4.04 and dead-lettered with its IMEI.

Alerts are printed as they land in the gateway's JSON-lines file; the summary counts
what each device had confirmed, the alerts and the dead letters.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiocoap
import httpx
import yaml

import rules
from connectors.mqtt.mosquitto import Mosquitto, free_port
from connectors.nbiot.products import load_products
from connectors.nbiot.seal import seal
from engine.contracts.alerts import Level
from engine.tools.demo import _AlertTail, _dead_letters, _Stdout
from rules.store import make_imei
from simulators.nbiot_fleet import ctwing_body, encode

__all__ = ["run_nbiot_demo"]

PACKS = Path(rules.__file__).resolve().parent / "packs"
TOKEN_ENV = "VIGIL_DEMO_CTWING_TOKEN"
STEP_S = 300
STEPS = 36  # three hours
#: Station -> (IMEI, peak depth in m, step of the peak).
SENSORS = {
    "WL01": (make_imei(86500000, 1), 0.42, 14),
    "WL02": (make_imei(86500000, 2), 0.04, 16),
    "WL03": (make_imei(86500000, 3), 0.22, 18),
}
UNREGISTERED = make_imei(86500000, 9)
KEY = os.urandom(16)
WATERLOG = load_products().get("waterlog-v1")


def depth(peak: float, at: int, step: int) -> float:
    """Standing water (m): a cloudburst's bell over the step of its peak, then dry."""
    return round(max(0.0, peak * math.exp(-(((step - at) / 5.0) ** 2)) - 0.005), 3)


def _vigil(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "engine.tools.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _devices_csv(path: Path, stations: tuple[str, ...]) -> Path:
    lines = ["identity,station,product,key,metrics"]
    for station in stations:
        key = KEY.hex() if station == "WL01" else ""
        lines.append(f"{SENSORS[station][0]},{station},waterlog-v1,{key},"
                     "water_depth:road_water_depth")  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def _import(config: Path, csv: Path) -> bool:
    print(f"  $ vigil registry import {csv.name} --config vigil.yaml")
    done = _vigil("registry", "import", str(csv), "--config", str(config))
    print("    " + (done.stdout.strip() or done.stderr.strip()))
    return done.returncode == 0


class _Storm:
    """The three sensors and the stranger, step by step; counts what was confirmed."""

    def __init__(self, coap_port: int, push_port: int, token: str, start_s: int) -> None:
        self.coap_uri = f"coap://127.0.0.1:{coap_port}/nb"
        self.push_url = f"http://127.0.0.1:{push_port}/ctwing/{token}"
        self.start_s = start_s
        self.confirmed = dict.fromkeys(SENSORS, 0)
        self.refused: dict[str, str] = {}
        self.counter = 0
        #: WL02's uplinks refused before its registration reached the gateway.
        self.early = 0

    def _payload(self, station: str, step: int) -> bytes:
        _, peak, at = SENSORS[station]
        ts = self.start_s + step * STEP_S
        return encode(WATERLOG, [(ts, {"water_depth": depth(peak, at, step), "battery_v": 3.6})])

    async def _coap(self, ctx: aiocoap.Context, identity: str, body: bytes) -> aiocoap.Message:
        req = aiocoap.Message(code=aiocoap.POST, uri=f"{self.coap_uri}/{identity}", payload=body)
        return await asyncio.wait_for(ctx.request(req).response, 60)

    async def step(self, ctx: aiocoap.Context, http: httpx.AsyncClient, k: int, wl02: bool) -> None:
        imei = SENSORS["WL01"][0]
        self.counter += 1
        sealed = seal(KEY, imei, self.counter, self._payload("WL01", k))
        if (await self._coap(ctx, imei, sealed)).code == aiocoap.CHANGED:
            self.confirmed["WL01"] += 1
        imei = SENSORS["WL03"][0]
        ts_ms = (self.start_s + k * STEP_S) * 1000
        body = ctwing_body(imei, f"ctw-{imei[-6:]}", ts_ms, self._payload("WL03", k), k + 1)
        if (await http.post(self.push_url, content=body)).status_code == 200:
            self.confirmed["WL03"] += 1
        if wl02:
            # Until the gateway has caught up with the import (``registry_refresh_s``),
            # it answers 4.04; the sensor sends its reading again a little later.
            give_up = time.monotonic() + 30
            while time.monotonic() < give_up:
                resp = await self._coap(ctx, SENSORS["WL02"][0], self._payload("WL02", k))
                if resp.code == aiocoap.CHANGED:
                    self.confirmed["WL02"] += 1
                    break
                self.early += 1
                await asyncio.sleep(0.2)

    async def stranger(self, ctx: aiocoap.Context) -> None:
        resp = await self._coap(ctx, UNREGISTERED, self._payload("WL02", 0))
        self.refused[UNREGISTERED] = f"{resp.code} {resp.payload.decode(errors='replace')}"


def _settings(workdir: Path, mqtt_port: int, coap_port: int, push_port: int) -> Path:
    settings = {
        "app_id": "vigil-demo-nbiot", "data_dir": str(workdir / "data"), "partitions": 2,
        "stations": str(PACKS / "demo_nbiot.yaml"),
        "rules": [str(PACKS / "demo_nbiot_rules.yaml")],
        "alerts_jsonl": str(workdir / "alerts.jsonl"), "console": False,
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "client_id": "vigil-demo-nbiot"},
        "batch": {"max_readings": 2000, "linger_ms": 20},
        "nbiot": {"coap_port": coap_port, "push_port": push_port,
                  "ctwing_token_env": TOKEN_ENV, "registry_refresh_s": 0.5},
    }  # fmt: skip
    path = workdir / "vigil.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def _udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_nbiot_demo(duration_s: float = 60.0, keep: bool = False) -> int:
    """Run it; 0 when WL01 reached orange and was cleared, WL03 reached yellow, WL02
    was accepted after its import, and the stranger was refused and dead-lettered."""
    for noisy in ("httpx", "coap"):  # the demo's own clients: quiet
        logging.getLogger(noisy).setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="vigil-demo-nbiot-"))
    storm_s = max(5.0, duration_s / 4)
    token = os.urandom(8).hex()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_ENV: token}
    start_s = (int(time.time()) - STEPS * STEP_S) // STEP_S * STEP_S
    print(f"Vigil NB-IoT demo: three waterlogging sensors (CoAP, CTWing push) through a "
          f"cloudburst; 3 h of readings replayed in {storm_s:.0f} s\n")  # fmt: skip
    engine: subprocess.Popen[str] | None = None
    try:
        with Mosquitto() as broker:
            coap_port, push_port = _udp_port(), free_port()
            config = _settings(workdir, broker.port, coap_port, push_port)
            if not _import(config, _devices_csv(workdir / "devices.csv", ("WL01", "WL03"))):
                return 1
            engine = subprocess.Popen(
                [sys.executable, "-m", "engine.tools.cli", "run", "--config", str(config),
                 "--loglevel", "warn"],
                stdout=subprocess.PIPE, stderr=(workdir / "engine.log").open("w"), text=True,
                env=env,
            )  # fmt: skip
            stdout = _Stdout(engine)
            if stdout.wait("nbiot ingest listening", timeout=180) is None:
                print("the engine did not start; see", workdir / "engine.log", file=sys.stderr)
                return 1
            print(f"  gateway (pid {engine.pid}): CoAP on udp 127.0.0.1:{coap_port}, CTWing "
                  f"push to http://127.0.0.1:{push_port}/ctwing/<token>\n")  # fmt: skip
            storm = _Storm(coap_port, push_port, token, start_s)
            tail = _AlertTail(workdir / "alerts.jsonl")

            async def run() -> None:
                ctx = await aiocoap.Context.create_client_context()
                try:
                    async with httpx.AsyncClient() as http:
                        await storm.stranger(ctx)
                        wl02 = False
                        for k in range(STEPS):
                            if k == STEPS // 3:
                                csv = _devices_csv(workdir / "installed.csv", ("WL02",))
                                await asyncio.to_thread(_import, config, csv)
                                wl02 = True
                            await storm.step(ctx, http, k, wl02)
                            tail.poll()
                            await asyncio.sleep(storm_s / STEPS)
                finally:
                    await ctx.shutdown()

            asyncio.run(run())
            quiet_until = time.monotonic() + 4.0
            seen = len(tail.events)
            while time.monotonic() < quiet_until:
                tail.poll()
                if len(tail.events) != seen:
                    seen, quiet_until = len(tail.events), time.monotonic() + 4.0
                time.sleep(0.2)
            engine.send_signal(signal.SIGTERM)
            engine.wait(timeout=60)
            tail.poll()
        dead = _dead_letters(workdir / "data", "vigil-demo-nbiot-dead-letter")
        print("\nSummary")
        for station, n in storm.confirmed.items():
            evs = [e for e in tail.events if e.station == station]
            peak = max((Level.parse(e.level) for e in evs), default=Level.NONE)
            cleared = "all clear" if evs and evs[-1].state == "resolved" else "no alert open"
            print(f"  {station} ({SENSORS[station][0]}): {n} uplinks confirmed, highest level "
                  f"{peak.label}, {cleared}")  # fmt: skip
        print(f"  WL02's uplinks refused before its import reached the gateway: {storm.early}")
        for identity, answer in storm.refused.items():
            print(f"  unregistered {identity}: answered {answer}")
        for reason, source in dead:
            print(f"  dead-letter: {source}: {reason}")
        levels = {s: max((Level.parse(e.level) for e in tail.events if e.station == s),
                         default=Level.NONE) for s in SENSORS}  # fmt: skip
        wl01 = [e for e in tail.events if e.station == "WL01"]
        ok = (
            engine.returncode == 0
            and levels["WL01"] == Level.ORANGE
            and bool(wl01) and wl01[-1].state == "resolved"
            and levels["WL03"] == Level.YELLOW
            and storm.confirmed["WL02"] > 0
            and any(UNREGISTERED in reason for reason, _ in dead)
        )  # fmt: skip
        print(f"\n  data directory: {workdir}" if keep else "")
        return 0 if ok else 1
    finally:
        if engine is not None and engine.poll() is None:
            engine.kill()
            engine.wait()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)

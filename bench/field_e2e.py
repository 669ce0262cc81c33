"""End to end through the gateway's SL 651 server: frames/s from many concurrent
station connections to the kernels, on the embedded log.

Starts mosquitto (``vigil run`` always runs MQTT ingest too) and ``vigil run`` with an
SL 651 server and a registry of ``--stations`` river gauges, each with its SL 651
identity, and the rule ``bench.field_level`` (hourly max of the stage above the warning
level, no ``for``: it fires on the reading that crosses). Then one asyncio connection
per station sends ``--frames`` hourly reports (27 readings each, ``bench/field_decode.py``)
as fast as the server takes them; the last report of every station has its stage above
the warning level, the others below it (one alert per station). Timed: from the first
byte sent to the moment every station's alert is in the alerts file, so every frame was
decoded, made durable, acknowledged (each station counts its acknowledgements) and
evaluated by the kernels.

    NUMBA_CACHE_DIR=$PWD/.cache/numba .venv/bin/python bench/field_e2e.py \\
        [--stations 1000] [--frames 20] [--json bench/results/field-e2e.json] \\
        [--tree /tmp/base] [--profile gateway.speedscope.json]

``--tree`` runs the gateway from another checkout (a ``git archive`` copy of ``main``:
before and after in the same session); ``--profile`` records the gateway with py-spy
(250 Hz, its own CPU not in the gateway's). Besides the rates, ``gateway_cpu_s_per_kframe``
is the gateway's user + system CPU over the timed span per 1,000 frames: less sensitive
than the wall time to the other work on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.field_decode import hourly_frame
from bench.harness import WARNING_LEVEL_M, cpu_s, gauge, report, start_gateway, write_config
from connectors.mqtt.mosquitto import Mosquitto

#: The last report's stage (mm), above the warning level; the others' are under QUIET_MM.
LAST_STAGE_MM = 9_999_999
QUIET_MM = int(WARNING_LEVEL_M * 1000)


def _alerted(alerts: Path) -> int:
    """Stations whose last report's alert is in the alerts file."""
    if not alerts.exists():
        return 0
    lines = alerts.read_text().splitlines()
    return len(
        {a["station"] for a in map(json.loads, lines) if (a.get("value") or 0) * 1000 >= QUIET_MM}
    )


def _setup(workdir: Path, stations: int, mqtt_port: int) -> Path:
    metrics = {"water_level": "m", "rainfall": "mm", "rainfall_total": "mm", "voltage": "V",
               "water_level_relative": "m"}  # fmt: skip
    registry = [
        gauge(f"G{i:05d}", metrics, sl651={"address": f"{10_000 + i:010d}", "password": "1234"})
        for i in range(stations)
    ]
    return write_config(
        workdir, registry, "bench.field_level", mqtt_port,
        sl651={"port": 0, "max_connections": stations + 100, "max_per_address": stations + 100},
        batch={"max_readings": 20_000, "linger_ms": 20}, lateness_ms=0,
    )  # fmt: skip


def _frames(stations: int, per_station: int) -> list[list[bytes]]:
    rng = random.Random(20240701)
    t0 = datetime(2024, 7, 1, 1, 0)
    out = []
    for i in range(stations):
        frames = []
        for k in range(per_station):
            t = t0 + timedelta(hours=k)
            if k == per_station - 1:  # stage 9999.999 m: above the warning level, the rule fires
                frame = hourly_frame(random.Random(k), 10_000 + i, t, k + 1, stage=LAST_STAGE_MM)
            else:  # below it: the rule stays quiet (a random stage up to 9999.999 m fired a
                # third of the reports, and the alerts' output became much of the work)
                frame = hourly_frame(rng, 10_000 + i, t, k + 1, stage=rng.randrange(QUIET_MM))
            frames.append(frame)
        out.append(frames)
    return out


async def _station(port: int, frames: list[bytes], acks: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(frames))
    await writer.drain()
    got = 0
    while got < len(frames):  # each acknowledgement is a 7E7E frame of 25 bytes
        chunk = await reader.readexactly(25)
        got += chunk[:2] == b"\x7e\x7e"
    acks.append(got)
    writer.close()


async def _send(port: int, frames: list[list[bytes]]) -> list[int]:
    acks: list[int] = []
    await asyncio.gather(*(_station(port, f, acks) for f in frames))
    return acks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stations", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--tree", type=Path, help="run the gateway from this checkout")
    ap.add_argument("--profile", type=Path, help="py-spy the gateway into this speedscope file")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="vigil-field-e2e-"))
    frames = _frames(args.stations, args.frames)
    total = args.stations * args.frames
    with Mosquitto() as broker:
        config = _setup(workdir, args.stations, broker.port)
        engine = start_gateway(config, workdir, args.tree.resolve() if args.tree else None)
        spy: subprocess.Popen[bytes] | None = None
        port: list[int] = []
        ready = threading.Event()

        def watch() -> None:
            assert engine.stdout is not None
            subscribed = False
            for line in engine.stdout:
                if "sl651 listening on" in line:
                    port.append(int(line.rsplit(":", 1)[1]))
                subscribed |= "ingest subscribed" in line
                if subscribed and port:
                    ready.set()

        threading.Thread(target=watch, daemon=True).start()
        try:
            assert ready.wait(300) and port, (workdir / "engine.log").read_text()
            if args.profile is not None:
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                     str(engine.pid), "--format", "speedscope", "--rate", "250",
                     "--output", str(args.profile)],
                    stdout=subprocess.DEVNULL, stderr=(workdir / "py-spy.log").open("w"),
                )  # fmt: skip
                time.sleep(1.0)
            cpu0 = cpu_s(engine.pid)
            start = time.perf_counter()
            acks = asyncio.run(_send(port[0], frames))
            acked = time.perf_counter() - start
            alerts = workdir / "alerts.jsonl"
            while _alerted(alerts) < args.stations:
                time.sleep(0.05)
            done = time.perf_counter() - start
            cpu = cpu_s(engine.pid) - cpu0
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            engine.terminate()
            engine.wait(120)
    assert sum(acks) == total, (sum(acks), total)
    result = {
        "stations": args.stations, "frames": total, "readings": total * 27,
        "seconds_to_all_acked": acked, "seconds_to_all_alerts": done,
        "frames_per_s_acked": total / acked, "frames_per_s_to_kernels": total / done,
        "readings_per_s_to_kernels": total * 27 / done,
        "gateway_cpu_s_per_kframe": cpu / total * 1000, "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
    }  # fmt: skip
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

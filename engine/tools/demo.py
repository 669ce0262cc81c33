"""``vigil demo``: a river flood end to end on the embedded runtime, in about a minute.

It starts a real mosquitto on a free loopback port, the gateway (``vigil run``) as a
child process on a temporary data directory, and a simulator that publishes three
river gauges through a flood (rise through the warning level, past the guaranteed
level at one gauge and the historical maximum at another, then recession) at QoS 1.
Two days of 5-minute readings are compressed into the run. Alerts are shown as they
land in the dispatcher's JSON-lines file; a few malformed messages show the dead-letter
path. At the end everything is stopped and a summary printed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

import rules
from connectors.mqtt.mosquitto import Mosquitto
from connectors.sinks.console import format_event
from engine.contracts.alerts import AlertEvent, Level
from engine.runtime.transport.log import DurableLog
from simulators.publisher import Publisher
from simulators.river import FloodWave, flood_readings

__all__ = ["run_demo"]

PACKS = Path(rules.__file__).resolve().parent / "packs"
START_MS = 1_719_763_200_000  # 2024-06-30 16:00 UTC = 07-01 00:00 Beijing time
HOURS = 48.0
STEP_MIN = 5.0

WAVES = (
    # Upstream gauge: past the guaranteed level (orange).
    FloodWave("HZ001", base=2.8, peak=6.1, time_to_peak_h=12.0),
    # Middle gauge: past its historical maximum (red).
    FloodWave("HZ002", base=1.9, peak=5.0, time_to_peak_h=15.0),
    # Tributary: just over the warning level (yellow).
    FloodWave("HZ003", base=1.5, peak=2.85, time_to_peak_h=18.0),
)

BAD_MESSAGES = (
    ("vigil/HZ001/water_level", b'{"value": "high"}'),
    ("vigil/HZ002/water_level", b"\x7e\x7e\x01garbage"),
    ("vigil/XX999/water_level", b'{"value": 1.0, "ts": 1719763200000}'),
)


def _write_settings(workdir: Path, port: int) -> Path:
    settings = {
        "app_id": "vigil-demo",
        "data_dir": str(workdir / "data"),
        "partitions": 2,
        "stations": str(PACKS / "demo_stations.yaml"),
        "rules": [str(PACKS / "flood.yaml")],
        "alerts_jsonl": str(workdir / "alerts.jsonl"),
        "console": False,
        "mqtt": {"host": "127.0.0.1", "port": port, "client_id": "vigil-demo-gateway"},
        "batch": {"max_readings": 2000, "linger_ms": 50},
    }
    path = workdir / "vigil.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


class _AlertTail:
    """Prints alert events as they are appended to the dispatcher's JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[AlertEvent] = []
        self._offset = 0

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as f:
            f.seek(self._offset)
            while line := f.readline():
                if not line.endswith("\n"):
                    break  # the writer is mid-line; read it next time
                self._offset = f.tell()
                event = AlertEvent.from_json(line)
                self.events.append(event)
                print("  " + format_event(event, sys.stdout.isatty()), flush=True)


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> bool:
    found = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if needle in line:
                found.set()

    threading.Thread(target=reader, daemon=True).start()
    return found.wait(timeout)


def _summary(events: list[AlertEvent], published: int, dead: list[tuple[str, str]]) -> None:
    print("\nSummary")
    print(
        f"  readings published: {published}   alert events: {len(events)}   "
        f"dead-lettered messages: {len(dead)}"
    )
    by_station: dict[str, list[AlertEvent]] = {}
    for e in events:
        by_station.setdefault(e.station, []).append(e)
    for wave in WAVES:
        evs = by_station.get(wave.station, [])
        peak = max((Level.parse(e.level) for e in evs), default=Level.NONE)
        clear = [e for e in evs if e.state == "resolved"]
        cleared = "all clear" if clear and evs[-1].state == "resolved" else "still firing"
        print(f"  {wave.station}: highest level {peak.label:<6} {len(evs)} transitions, {cleared}")
    for reason, source in dead:
        print(f"  dead-letter: {source}: {reason}")


def _dead_letters(data_dir: Path, topic: str) -> list[tuple[str, str]]:
    log = DurableLog(data_dir)
    try:
        records = [
            r for p in range(log.partitions(topic) or 0) for r in log.read(topic, p, 0, 1000)
        ]
        return [
            (dict(r.headers)["vigil-reason"].decode(), dict(r.headers)["vigil-source"].decode())
            for r in records
        ]
    finally:
        log.close()


def run_demo(duration_s: float = 60.0, keep: bool = False) -> int:
    """Run the demo; returns the process exit code (0 when the flood was seen through)."""
    workdir = Path(tempfile.mkdtemp(prefix="vigil-demo-"))
    readings = list(flood_readings(WAVES, START_MS, HOURS, STEP_MIN))
    publish_s = max(5.0, duration_s - 15.0)
    print(
        f"Vigil demo: {len(WAVES)} river gauges, {HOURS:.0f} h of 5-min readings "
        f"({len(readings)}) replayed in {publish_s:.0f} s\n"
    )
    engine: subprocess.Popen[str] | None = None
    try:
        with Mosquitto() as broker:
            print(f"  mosquitto on 127.0.0.1:{broker.port}")
            config = _write_settings(workdir, broker.port)
            engine = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "engine.tools.cli",
                    "run",
                    "--config",
                    str(config),
                    "--loglevel",
                    "warn",
                ],
                stdout=subprocess.PIPE,
                stderr=(workdir / "engine.log").open("w"),
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            if not _wait_for_line(engine, "ingest subscribed", timeout=120):
                print("the engine did not start; see", workdir / "engine.log", file=sys.stderr)
                return 1
            print(f"  engine running on local://{workdir / 'data'} (pid {engine.pid})\n")
            tail = _AlertTail(workdir / "alerts.jsonl")
            publisher = Publisher(broker.host, broker.port)
            thread = threading.Thread(
                target=publisher.publish, args=(readings, publish_s, len(readings)), daemon=True
            )
            thread.start()
            bad_at = time.monotonic() + publish_s * 0.3
            bad_sent = False
            while thread.is_alive():
                tail.poll()
                if not bad_sent and time.monotonic() >= bad_at:
                    for topic, payload in BAD_MESSAGES:
                        publisher.publish_raw(topic, payload)
                    bad_sent = True
                time.sleep(0.2)
            # Let the last batches through the topology, then stop the engine cleanly.
            quiet_until = time.monotonic() + 4.0
            seen = len(tail.events)
            while time.monotonic() < quiet_until:
                tail.poll()
                if len(tail.events) != seen:
                    seen, quiet_until = len(tail.events), time.monotonic() + 4.0
                time.sleep(0.2)
            publisher.close()
            engine.send_signal(signal.SIGTERM)
            engine.wait(timeout=60)
            tail.poll()
        dead = _dead_letters(workdir / "data", "vigil-demo-dead-letter")
        _summary(tail.events, len(readings), dead)
        print(f"\n  alerts file: {workdir / 'alerts.jsonl'}" if keep else "")
        ok = bool(tail.events) and engine.returncode == 0
        return 0 if ok else 1
    finally:
        if engine is not None and engine.poll() is None:
            engine.kill()
            engine.wait()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)

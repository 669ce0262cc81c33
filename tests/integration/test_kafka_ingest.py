"""The separate-process Kafka path end to end: mosquitto ▶ ``vigil ingest mqtt`` ▶ Kafka ▶
``vigil worker`` ▶ JSONL.

Real mosquitto, a real Kafka broker (the session's ``kafka_bootstrap``), and both Vigil
commands as child processes. ``mosquitto_pub`` publishes water levels that cross the
orange line of a demo gauge; the worker's dispatcher writes the alert to its JSONL file.
Malformed payloads go to the ``<id>-dead-letter`` topic with the reason in the
``vigil-reason`` header and the raw bytes as the value, while good readings keep flowing.

A machine without mosquitto or Kafka fails this test, it never skips.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.mqtt.mosquitto import Mosquitto, free_port
from engine.contracts.alerts import AlertEvent
from tests.integration.conftest import PACKS, publish_rise_and_bad_payloads

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
T0 = 1_719_763_200_000


class Vigil:
    """A ``vigil`` command as a child process, output in ``<name>.log``, lines watched."""

    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        self.name = name
        self.log = tmp / f"{name}.log"
        self._seen: list[str] = []
        self._lock = threading.Lock()
        self._out = self.log.open("w")
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba")),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.tools.cli", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._out.write(line)
            self._out.flush()
            with self._lock:
                self._seen.append(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(text in line for line in self._seen):
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no {text!r} after {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        with self._lock:
            return "".join(self._seen)[-n:]

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def processes() -> Iterator[list[Vigil]]:
    started: list[Vigil] = []
    yield started
    for p in started:
        p.kill()


def _settings(tmp: Path, mqtt_port: int, app_id: str) -> Path:
    settings = {
        "app_id": app_id,
        "data_dir": str(tmp / "data"),
        "partitions": 2,
        "stations": str(PACKS / "demo_stations.yaml"),
        "rules": [str(PACKS / "flood.yaml")],
        "alerts_jsonl": str(tmp / "alerts.jsonl"),
        "console": False,
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "client_id": f"{app_id}-ingest"},
        "batch": {"max_readings": 500, "linger_ms": 20},
        "lateness_ms": 0,
    }
    path = tmp / "vigil.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def start_ingest_and_worker(
    tmp: Path, config: Path, bootstrap: str, processes: list[Vigil]
) -> tuple[Vigil, Vigil]:
    """``vigil ingest mqtt`` (subscribed) and then ``vigil worker`` on ``config``, both
    on Kafka at ``bootstrap`` and in ``processes`` (stopped by that fixture)."""
    broker = f"kafka://{bootstrap}"
    ingest = Vigil(tmp, "ingest", "ingest", "mqtt", "--config", str(config), "--broker", broker)
    processes.append(ingest)
    ingest.wait_for("ingest subscribed", timeout=120)
    worker = Vigil(
        tmp,
        "worker",
        *("worker", "--config", str(config), "--broker", broker),
        *("--web-port", str(free_port()), "--loglevel", "info"),
    )
    processes.append(worker)
    return ingest, worker


def _wait_alerts(path: Path, worker: Vigil, timeout: float) -> list[AlertEvent]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            events = [AlertEvent.from_json(x) for x in path.read_text().splitlines() if x]
            if events:
                return events
        assert worker.proc.poll() is None, f"worker exited early:\n{worker.tail()}"
        time.sleep(0.2)
    raise AssertionError(f"no alert in {path} after {timeout}s:\n{worker.tail()}")


async def _dead_letters(bootstrap: str, topic: str, n: int) -> list[tuple[bytes, dict[str, str]]]:
    """The first ``n`` records of the single-partition dead-letter topic: (value, headers)."""
    # "earliest": a reset still in flight from ``assign`` would override a seek.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        out: list[tuple[bytes, dict[str, str]]] = []
        deadline = time.monotonic() + 30
        while len(out) < n and time.monotonic() < deadline:
            batches = await consumer.getmany(tp, timeout_ms=1000)
            for r in batches.get(tp, []):
                out.append((r.value or b"", {k: v.decode() for k, v in r.headers}))
        return out
    finally:
        await consumer.stop()


def test_mqtt_to_kafka_to_worker_alert_and_dead_letters(
    kafka_bootstrap: str, mosquitto: Mosquitto, tmp_path: Path, processes: list[Vigil]
) -> None:
    app_id = f"vigil-ing-{uuid.uuid4().hex[:8]}"
    config = _settings(tmp_path, mosquitto.port, app_id)
    ingest, worker = start_ingest_and_worker(tmp_path, config, kafka_bootstrap, processes)

    publish_rise_and_bad_payloads(mosquitto, T0)

    events = _wait_alerts(tmp_path / "alerts.jsonl", worker, timeout=120)
    first = events[0]
    assert (first.station, first.metric, first.state) == ("HZ003", "water_level", "firing")
    assert first.rule_id == "flood.river_level"
    assert first.level == "orange" and first.previous_level == "none"
    assert first.threshold == pytest.approx(3.40)
    assert first.value == pytest.approx(3.5)
    assert first.labels["basin"] == "demo_river"

    letters = asyncio.run(_dead_letters(kafka_bootstrap, f"{app_id}-dead-letter", 3))
    assert sorted((h["vigil-reason"], value) for value, h in letters) == [
        ("payload is not JSON: Expecting value: line 1 column 1 (char 0)", b"not json at all"),
        ("unknown station 'NOPE1'", json.dumps({"value": 1.0, "ts": T0}).encode()),
        ("value must be a number, got 'high'", b'{"value": "high"}'),
    ]
    assert all(h["vigil-source"].startswith("vigil/") for _, h in letters)

    assert ingest.terminate() == 0, ingest.tail()
    assert worker.terminate() == 0, worker.tail()

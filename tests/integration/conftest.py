"""Real services for integration tests: mosquitto, Kafka, and the gateway as a child
process.

A missing service is a failure with the reason, never a skip.

The Kafka fixtures are registered here, once for the directory: a session-scoped
fixture that test modules import themselves is a fixture of each module, so every
module started its own "session" broker and kept it until the session ended (ten
brokers by the end of a full run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import rules
from connectors.mqtt.mosquitto import Mosquitto
from tests.integration.kafka_fixture import kafka_bootstrap, kafka_cluster3

__all__ = ["kafka_bootstrap", "kafka_cluster3"]  # fixtures, for every module here

PACKS = Path(rules.__file__).resolve().parent / "packs"


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    with Mosquitto() as broker:
        yield broker


def mosquitto_pub(broker: Mosquitto, topic: str, payload: str) -> None:
    """Publish one message at QoS 1 with the real ``mosquitto_pub`` client."""
    exe = shutil.which("mosquitto_pub")
    assert exe, "mosquitto_pub is not installed (apt-get install mosquitto-clients)"
    subprocess.run(
        [exe, "-h", broker.host, "-p", str(broker.port), "-q", "1", "-t", topic, "-m", payload],
        check=True,
        timeout=10,
    )


def publish_rise_and_bad_payloads(broker: Mosquitto, t0: int) -> None:
    """HZ003 (warning 2.60, guaranteed 3.40 m in the demo registry) at 1.0 m at ``t0``
    (ms), then at 3.5 m every 5 minutes to ``t0`` + 20 min (the flood rule needs 10 min
    above a line); between them three messages that must be dead-lettered: a value that
    is not a number, an unknown station, and a payload that is not JSON."""
    topic = "vigil/HZ003/water_level"
    mosquitto_pub(broker, topic, json.dumps({"value": 1.0, "ts": t0}))
    mosquitto_pub(broker, topic, '{"value": "high"}')
    mosquitto_pub(broker, "vigil/NOPE1/water_level", json.dumps({"value": 1.0, "ts": t0}))
    mosquitto_pub(broker, topic, "not json at all")
    for minute in (5, 10, 15, 20):
        mosquitto_pub(broker, topic, json.dumps({"value": 3.5, "ts": t0 + minute * 60_000}))


class EngineProcess:
    """``vigil run --config`` in a child process, with its stdout watched; ``command``
    replaces ``vigil run`` (a test's own gateway script, given the settings file)."""

    def __init__(self, config: Path, log: Path, command: list[str] | None = None) -> None:
        self.config = config
        self.log = log
        self.command = command
        self.proc: subprocess.Popen[str] | None = None
        self._subscribed = threading.Event()
        #: What the current process printed on stdout, line by line.
        self.lines: list[str] = []

    def start(self, timeout: float = 120.0) -> None:
        self._subscribed.clear()
        self.lines = []
        run = [sys.executable, "-m", "engine.tools.cli", "run", "--config", str(self.config)]
        self.proc = subprocess.Popen(
            [*self.command, str(self.config)] if self.command else [*run, "--loglevel", "warn"],
            stdout=subprocess.PIPE,
            stderr=self.log.open("a"),
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._watch, args=(self.proc,), daemon=True).start()
        if not self._subscribed.wait(timeout):
            self.kill()
            raise AssertionError(f"engine did not subscribe in {timeout}s:\n{self.log.read_text()}")

    def _watch(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        lines = self.lines
        for line in proc.stdout:
            lines.append(line)
            if "ingest subscribed" in line:
                self._subscribed.set()

    def listening(self, server: str, timeout: float = 60.0) -> int:
        """The port a field server (``sl651``, ``hj212``) announced it listens on."""
        deadline = time.monotonic() + timeout
        prefix = f"vigil: {server} listening on "
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if prefix in line:  # after whatever terminal codes Faust wrote first
                    return int(line.rsplit(":", 1)[1])
            time.sleep(0.05)
        raise AssertionError(f"{server} did not announce its port:\n{self.log.read_text()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 120.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def write_settings(tmp: Path, port: int, **overrides: object) -> Path:
    settings: dict[str, object] = {
        "app_id": "vigil-test",
        "data_dir": str(tmp / "data"),
        "partitions": 2,
        "stations": str(PACKS / "demo_stations.yaml"),
        "rules": [str(PACKS / "flood.yaml")],
        "alerts_jsonl": str(tmp / "alerts.jsonl"),
        "console": False,
        "mqtt": {"host": "127.0.0.1", "port": port, "client_id": "vigil-test-gateway"},
        "batch": {"max_readings": 500, "linger_ms": 20},
        "lateness_ms": 0,
    }
    settings.update(overrides)
    path = tmp / "vigil.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


@pytest.fixture
def engine(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[EngineProcess]:
    proc = EngineProcess(write_settings(tmp_path, mosquitto.port), tmp_path / "engine.log")
    yield proc
    proc.kill()

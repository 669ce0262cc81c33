"""The gateway's storage, with a real ``vigil run``, real mosquitto and real damage to the
real files of its data directory.

* A cut write-ahead log or a table file with flipped bytes: the next start refuses with
  one message naming the recovery command (no traceback); ``vigil data repair`` keeps
  what is readable and the gateway starts and evaluates again.
* A data directory at its cap: ingest pauses (the gateway leaves the broker, which keeps
  the readings), a ``gateway#storage`` alert says so; with the space back it resumes and
  every reading arrives, once. An oversized payload is dead-lettered cut short.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from connectors.mqtt.mosquitto import Mosquitto
from engine.runtime.storage import RULE_ID
from engine.runtime.transport.log import DurableLog
from tests.integration.conftest import EngineProcess, write_settings
from tests.integration.test_mqtt_ingest_faults import (
    SENTINEL_RULES,
    TOPIC,
    _alerts,
    _Publisher,
    _reading,
    _telemetry,
    _topic,
    _wait_alerts,
)

pytestmark = pytest.mark.integration


def _engine(tmp: Path, broker: Mosquitto, **overrides: object) -> EngineProcess:
    rules = tmp / "sentinel.yaml"
    rules.write_text(SENTINEL_RULES)
    config = write_settings(tmp, broker.port, rules=[str(rules)], **overrides)
    return EngineProcess(config, tmp / "engine.log")


def _vigil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.tools.cli", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _largest(log_dir: Path, suffix: str) -> Path:
    return max(log_dir.glob(f"*{suffix}"), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["cut-wal", "flipped-table"])
def test_a_damaged_log_refuses_to_start_and_repair_brings_it_back(
    mosquitto: Mosquitto, tmp_path: Path, damage: str
) -> None:
    engine = _engine(tmp_path, mosquitto)
    engine.start()
    publisher = _Publisher(mosquitto)
    try:
        readings = [_reading(s, k, 1.0 + k % 9 / 10) for k in range(2_000) for s in ("HZ001",)]
        publisher.publish([*readings, _reading("HZ001", 2_000, 150.0)])
        _wait_alerts(tmp_path / "alerts.jsonl", 1, engine)
        data = tmp_path / "data"
        log_dir = data / "log"
        if damage == "cut-wal":
            engine.kill()  # the records only in the write-ahead log, as after a crash
            wal = _largest(log_dir, ".log")
            os.truncate(wal, wal.stat().st_size // 2)
            expected = "Corruption: truncated record body"
        else:
            assert engine.terminate() == 0
            DurableLog(data).close()  # an open moves the write-ahead log into a table file
            table = _largest(log_dir, ".sst")
            raw = bytearray(table.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            table.write_bytes(bytes(raw))
            expected = "block checksum mismatch"

        config = str(engine.config)
        refused = _vigil("run", "--config", config)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert "Traceback" not in refused.stderr
        assert refused.stderr.count(f"vigil: the log in {data} is damaged") == 1
        assert expected in refused.stderr
        assert f"vigil data repair --config {config}" in refused.stderr

        check = _vigil("data", "check", "--config", config)
        assert check.returncode == 1 and expected in check.stdout, check.stdout

        repair = _vigil("data", "repair", "--config", config)
        assert repair.returncode == 0, repair.stderr
        assert f"{data}: lost: " in repair.stdout and f"{data}: repaired: " in repair.stdout
        assert [p for p in data.iterdir() if p.name.startswith("log.damaged-")]

        # Back in service: a new reading over the line is evaluated and alerted.
        engine.start()
        publisher.publish([_reading("HZ002", 0, 150.0)])
        events = _wait_alerts(tmp_path / "alerts.jsonl", 2, engine)
        assert ("HZ002", "red") in {(e.station, e.level) for e in events}
        assert engine.terminate() == 0
    finally:
        publisher.close()
        engine.kill()


def _wait_disconnected_sessions(broker: Mosquitto, at_least: int, timeout: float = 60) -> None:
    """Wait until the broker reports persistent sessions whose client is away (its
    ``$SYS`` count, published every ``sys_interval``)."""
    seen = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if int(msg.payload) >= at_least:
            seen.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sys-watcher")
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.subscribe("$SYS/broker/clients/disconnected")
    client.loop_start()
    try:
        assert seen.wait(timeout), "the gateway did not leave the broker"
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_full_data_directory_pauses_ingest_and_space_resumes_it(tmp_path: Path) -> None:
    with Mosquitto(override={"sys_interval": "1"}) as broker:
        storage = {"data_dir_max_mb": 8, "check_interval_s": 0.2, "max_payload_bytes": 4096}
        engine = _engine(tmp_path, broker, storage=storage)
        engine.start()
        publisher = _Publisher(broker)
        try:
            oversized = (TOPIC.format("HZ001"), b'{"value": 1.0, "pad": "' + b"x" * 100_000, 1)
            first = [_reading("HZ001", k, 1.0) for k in range(100)]
            publisher.publish([oversized, *first])

            ballast = tmp_path / "data" / "ballast"
            ballast.write_bytes(b"\0" * 9_000_000)  # the directory is now over its 8 MB
            events = _wait_alerts(tmp_path / "alerts.jsonl", 1, engine)
            (full,) = [e for e in events if e.rule_id == RULE_ID]
            assert (full.level, full.previous_level, full.state) == ("orange", "none", "firing")
            assert "storage full, ingest paused" in full.summary
            _wait_disconnected_sessions(broker, 1)  # the gateway's session, kept while away

            # Published while the gateway is away: the broker keeps them.
            later = [_reading("HZ001", k, 1.0) for k in range(100, 300)]
            publisher.publish([*later, _reading("HZ001", 300, 150.0)])
            assert not [e for e in _alerts(tmp_path / "alerts.jsonl") if e.station == "HZ001"]

            ballast.unlink()
            events = _wait_alerts(tmp_path / "alerts.jsonl", 3, engine)
            storage_events = [(e.level, e.previous_level) for e in events if e.rule_id == RULE_ID]
            assert storage_events == [("orange", "none"), ("none", "orange")]
            assert [(e.station, e.level) for e in events if e.rule_id != RULE_ID] == [
                ("HZ001", "red")
            ]
            assert engine.terminate() == 0
        finally:
            publisher.close()
            engine.kill()

    readings = _telemetry(tmp_path / "data")
    assert len(readings) == len(set(readings)) == 301
    (dead,) = _topic(tmp_path / "data", "dead-letter")
    raw, headers = dead
    assert raw == oversized[1][:1024]
    assert len(oversized[1]) == 100_023
    assert headers["vigil-reason"] == (
        b"payload of 100023 bytes is over the 4096 allowed (storage.max_payload_bytes); "
        b"its first 1024 bytes are kept"
    )
    log = engine.log.read_text()
    assert "MQTT ingest paused" in log and "MQTT ingest resumed" in log
    assert "Traceback" not in log

"""Through real mosquitto: a device whose numbered messages (``seq``) have a gap raises
the gateway's health alert and counts the loss; one whose messages only come twice or
out of order does not.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import paho.mqtt.client as mqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.mqtt.mosquitto import Mosquitto, free_port
from engine.contracts.alerts import AlertEvent
from engine.evaluation.sequence_gaps import RULE_ID
from tests.integration.conftest import EngineProcess, write_settings

pytestmark = pytest.mark.integration

T0 = 1_719_763_200_000
STEP = 5 * 60_000
T = TypeVar("T")


def _until(probe: Callable[[], T | None], what: str, engine: EngineProcess) -> T:
    deadline = time.monotonic() + 120
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within 120 s (last {last!r});\n{engine.log.read_text()}")


def _messages(station: str, seqs: list[int]) -> list[tuple[str, bytes]]:
    """Water levels numbered ``seqs``; each reading's time follows its number."""
    topic = f"vigil/{station}/water_level"
    return [
        (topic, json.dumps({"value": 1.0, "ts": T0 + n * STEP, "seq": n}).encode()) for n in seqs
    ]


def _publish(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="numbered-devices")
    client.max_inflight_messages_set(1)  # in the order given, one at a time
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            info = client.publish(topic, payload, qos=1)
            info.wait_for_publish(timeout=60)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def _alerts(path: Path) -> list[AlertEvent]:
    if not path.exists():
        return []
    return [AlertEvent.from_json(line) for line in path.read_text().splitlines() if line]


def test_a_gap_in_a_devices_sequence_numbers_raises_the_gateway_health_alert(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    web_port = free_port()
    config = write_settings(tmp_path, mosquitto.port, web_port=web_port)
    engine = EngineProcess(config, tmp_path / "engine.log")
    engine.start()
    web = httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=10)
    try:
        # HZ001: every number, each block of 8 shuffled, some sent twice; then a restart.
        clean = list(range(1, 101))
        rng = random.Random(10)
        for i in range(0, 100, 8):
            block = clean[i : i + 8]
            rng.shuffle(block)
            clean[i : i + 8] = block
        clean += [3, 50, 99, 100]
        # HZ002: 1..100 without 10.
        gappy = [n for n in range(1, 101) if n != 10]
        _publish(mosquitto, _messages("HZ001", clean) + _messages("HZ002", gappy))

        alerts_path = tmp_path / "alerts.jsonl"

        def health() -> list[AlertEvent]:
            return [e for e in _alerts(alerts_path) if e.rule_id == RULE_ID]

        (alert,) = _until(health, "the sequence-gaps alert", engine)
        assert (alert.station, alert.level, alert.previous_level) == (
            "vigil-test-gateway", "yellow", "none",
        )  # fmt: skip
        assert alert.value == 1.0  # one message lost; HZ001's duplicates and reordering: none
        assert alert.labels["devices"] == "vigil/HZ002/water_level: 1"

        def status() -> dict[str, Any] | None:
            body = web.get("/vigil/status").json()
            mqtt_status = body["connectors"][0]
            return mqtt_status if mqtt_status["counters"].get("received") == 203 else None

        seq = _until(status, "all 203 messages received", engine)["sequences"]
        assert seq == {
            "devices": 2,
            "lost": 1,
            "duplicates": 4,
            "restarts": 0,
            "lost_by_device": {"vigil/HZ002/water_level": 1},
        }
        shown = subprocess.run(
            [sys.executable, "-m", "engine.tools.cli", "status", "--config", str(config)],
            capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip
        assert (
            "sequence numbers: 2 devices, 1 messages lost on the way, 4 duplicates, 0 restarts; "
            "lost: vigil/HZ002/water_level 1"
        ) in shown, shown
        scrape = web.get("/metrics").text
        lost = {
            tuple(s.labels.items()): s.value
            for family in text_string_to_metric_families(scrape)
            for s in family.samples
            if s.name == "vigil_sequence_lost_messages_total"
        }
        assert lost == {(("connector", "mqtt"),): 1.0}
        assert "1 messages lost on the way" in engine.log.read_text()
        assert engine.terminate() == 0
    finally:
        web.close()
        engine.kill()

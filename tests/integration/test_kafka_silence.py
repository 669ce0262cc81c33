"""Silence on the wall clock on Kafka (issue 10, item 9): ``vigil worker`` writes the
ticks into the telemetry partitions it owns, so the gauges behind an MQTT ingest whose
devices all stop raise their silence alerts; a clean stop commits to the end of every
topic, ticks included.

Real mosquitto, a real Kafka broker, ``vigil ingest mqtt`` and ``vigil worker`` as child
processes (helpers of ``test_kafka_ingest``).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml
from paho.mqtt import client as mqtt

from connectors.mqtt.mosquitto import Mosquitto
from engine.contracts.alerts import AlertEvent
from engine.runtime.kafka.topics import TopicLayout
from tests.integration.conftest import PACKS
from tests.integration.kafka_load import wait_until_committed
from tests.integration.test_kafka_ingest import Vigil, processes, start_ingest_and_worker
from tests.integration.test_silence import RULES, STALE_S, STATIONS, TICK_S

__all__ = ["processes"]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _alerts(path: Path) -> list[AlertEvent]:
    if not path.exists():
        return []
    return [AlertEvent.from_json(line) for line in path.read_text().splitlines() if line]


def test_a_kafka_worker_finds_the_gauges_of_a_stopped_ingest_silent(
    kafka_bootstrap: str, mosquitto: Mosquitto, tmp_path: Path, processes: list[Vigil]
) -> None:
    app_id = f"vigil-sil-{uuid.uuid4().hex[:8]}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = tmp_path / "vigil.yaml"
    config.write_text(yaml.safe_dump({
        "app_id": app_id, "data_dir": str(tmp_path / "data"), "partitions": 2,
        "stations": str(PACKS / "demo_stations.yaml"),
        "rules": [str(rules)], "alerts_jsonl": str(tmp_path / "alerts.jsonl"),
        "console": False, "lateness_ms": 0,
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": f"{app_id}-ingest"},
    }))  # fmt: skip
    ingest, worker = start_ingest_and_worker(tmp_path, config, kafka_bootstrap, processes)
    alerts = tmp_path / "alerts.jsonl"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{app_id}-devices")
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()

    def publish(station: str, value: float) -> int:
        ts = int(time.time() * 1000)
        payload = json.dumps({"value": value, "ts": ts})
        client.publish(f"vigil/{station}/water_level", payload, qos=1).wait_for_publish(10)
        return ts

    try:
        # Above the warning line first: each gauge's alert says the worker is evaluating.
        deadline = time.time() + 180
        last: dict[str, int] = {}
        while {e.station for e in _alerts(alerts)} != set(STATIONS) and time.time() < deadline:
            for station in STATIONS:
                last[station] = publish(station, 9.0)
            time.sleep(1.0)
        assert {e.station for e in _alerts(alerts)} == set(STATIONS), worker.tail()
        for _ in range(3):  # then current readings for a few seconds more
            for station in STATIONS:
                last[station] = publish(station, 9.0)
            time.sleep(1.0)
        stopped = time.time()  # every device stops: no reading, ever

        firing: dict[str, AlertEvent] = {}
        while len(firing) < len(STATIONS) and time.time() < stopped + STALE_S + 2 * TICK_S + 60:
            time.sleep(0.2)
            firing = {
                e.station: e for e in _alerts(alerts)
                if e.rule_id == "test.level#silent" and e.state == "firing"
            }  # fmt: skip
        seen_after = time.time() - stopped
        print(f"silence alerts of every gauge seen {seen_after:.1f} s after the last reading")
        assert set(firing) == set(STATIONS), f"after {seen_after:.0f} s:\n{worker.tail()}"
        for station, event in firing.items():
            assert (event.started_at, event.at) == (last[station], last[station] + STALE_S * 1000)
        # Levels do not clear without data: each gauge is still at yellow, no all-clear.
        assert [e.state for e in _alerts(alerts) if e.rule_id == "test.level"] == ["firing"] * 3

        assert worker.terminate() == 0, worker.tail()
        assert ingest.terminate() == 0, ingest.tail()
        layout = TopicLayout(app_id, 2)
        wait_until_committed(kafka_bootstrap, layout, 10, lambda: None)
    finally:
        client.loop_stop()
        client.disconnect()

"""Through real mosquitto: mosquitto_pub publishes, the alert appears; bad payloads go
to dead-letter with the reason while good readings keep flowing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from connectors.mqtt.mosquitto import Mosquitto
from engine.contracts.alerts import AlertEvent
from engine.runtime.transport.log import DurableLog
from tests.integration.conftest import EngineProcess, publish_rise_and_bad_payloads

pytestmark = pytest.mark.integration

T0 = 1_719_763_200_000


def _wait_alerts(path: Path, n: int, timeout: float = 30.0) -> list[AlertEvent]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            events = [AlertEvent.from_json(x) for x in path.read_text().splitlines() if x]
            if len(events) >= n:
                return events
        time.sleep(0.1)
    raise AssertionError(
        f"expected {n} alerts in {path}, got: {path.read_text() if path.exists() else 'no file'}"
    )


def test_mosquitto_pub_reading_raises_alert_and_bad_payloads_dead_letter(
    engine: EngineProcess, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    engine.start()
    publish_rise_and_bad_payloads(mosquitto, T0)

    events = _wait_alerts(tmp_path / "alerts.jsonl", 1)
    first = events[0]
    assert (first.station, first.metric, first.state) == ("HZ003", "water_level", "firing")
    assert first.rule_id == "flood.river_level"
    assert first.level == "orange" and first.previous_level == "none"
    assert first.threshold == pytest.approx(3.40)
    assert first.value == pytest.approx(3.5)
    assert first.labels["basin"] == "demo_river"
    assert engine.terminate() == 0

    log = DurableLog(tmp_path / "data")
    try:
        topic = "vigil-test-dead-letter"
        records = [r for p in range(log.partitions(topic) or 0) for r in log.read(topic, p, 0, 100)]
    finally:
        log.close()
    reasons = sorted(dict(r.headers)["vigil-reason"].decode() for r in records)
    assert reasons == [
        "payload is not JSON: Expecting value: line 1 column 1 (char 0)",
        "unknown station 'NOPE1'",
        "value must be a number, got 'high'",
    ]
    raw = {bytes(r.value or b"") for r in records}
    assert b'{"value": "high"}' in raw and b"not json at all" in raw

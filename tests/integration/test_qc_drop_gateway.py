"""``qc.drop: [suspect]`` through the real gateway: readings published to real mosquitto,
``vigil run`` evaluating them, alerts read from its JSONL sink.

The issue's spike (0.50, 0.52, 5.20, 0.53 m with ``max_step: 0.2``) goes first, then a
real rise in steps of at most 0.2 m. The rise's alerts are the barrier: once they are
in, every event the spike could have caused is in too (one station, one partition, in
order), so the test asserts the alerts are exactly the rise's, on both evaluation paths,
and equal ``replay``'s.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from connectors.mqtt.mosquitto import Mosquitto
from engine.contracts.alerts import AlertEvent
from engine.tools.replay import replay
from tests.integration.conftest import EngineProcess, mosquitto_pub, write_settings
from tests.unit.test_qc_drop import RISE, SPIKE, STATIONS, STEP, T0, _ruleset, rules_yaml

pytestmark = pytest.mark.integration


def _wait_alerts(path: Path, n: int, timeout: float = 60.0) -> list[AlertEvent]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            events = [AlertEvent.from_json(x) for x in path.read_text().splitlines() if x]
            if len(events) >= n:
                return events
        time.sleep(0.1)
    raise AssertionError(f"expected {n} alerts, got: {path.read_text() if path.exists() else ''}")


def test_gateway_drops_suspect_readings(mosquitto: Mosquitto, tmp_path: Path) -> None:
    (tmp_path / "stations.yaml").write_text(STATIONS)
    (tmp_path / "rules.yaml").write_text(rules_yaml("drop"))
    config = write_settings(
        tmp_path, mosquitto.port, stations=str(tmp_path / "stations.yaml"),
        rules=[str(tmp_path / "rules.yaml")], partitions=1,
    )  # fmt: skip
    engine = EngineProcess(config, tmp_path / "engine.log")
    values = [*SPIKE, 0.54, *RISE]  # 1.20 at +45 min closes the chain's 30-45 min window
    readings = [("G1", "water_level", T0 + i * STEP, v) for i, v in enumerate(values)]
    try:
        engine.start()
        for _, _, ts, v in readings:
            mosquitto_pub(mosquitto, "vigil/G1/water_level", json.dumps({"value": v, "ts": ts}))
        _wait_alerts(tmp_path / "alerts.jsonl", 2)
        assert engine.terminate() == 0
        lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
        events = [AlertEvent.from_json(x) for x in lines if x]
    finally:
        engine.kill()
    got = sorted((e.rule_id, e.level, e.at) for e in events if "#" not in e.rule_id)
    rise = T0 + (5 + 3) * STEP  # 1.05 m
    assert got == [("chain", "yellow", T0 + 45 * 60_000), ("early", "yellow", rise)]
    expected = replay(_ruleset(tmp_path, drop=True), readings, flush=False)
    assert got == sorted((e.rule_id, e.level, e.at) for e in expected if "#" not in e.rule_id)

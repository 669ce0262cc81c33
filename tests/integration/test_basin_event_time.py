"""A basin rule on a running gateway, with one partition lagging: the basin alerts are
those of ``vigil replay``, not those of the order in which the gauges' alerts arrive.

HZ002 and HZ001 (demo_river basin; telemetry partitions 0 and 1 of 2) report the same
100 minutes, but HZ002's whole backlog reaches the gateway first. In event time HZ001 is
above its warning level from 0:25 to 0:45 and again from 1:10, HZ002 from 0:55: the
basin rule (2 gauges within an hour) rises at 1:10 only, and clears at 1:25 when HZ002
falls back below. Taken in arrival order, HZ002's entry at 0:55 came first, and HZ001's
at 0:25 counted with it: a false basin alert at 0:55, cleared "at 0:45", before the
true one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from connectors.mqtt.mosquitto import Mosquitto
from engine.contracts.alerts import AlertEvent
from engine.tools.replay import replay
from rules.api import load_ruleset
from rules.registry import load_registry
from tests.integration.conftest import PACKS, EngineProcess, mosquitto_pub, write_settings

pytestmark = pytest.mark.integration

T0 = 1_719_763_200_000
MIN = 60_000
BASIN = "flood.basin_corroborated"


def _series(station: str, levels: list[float]) -> list[tuple[str, str, int, float]]:
    return [(station, "water_level", T0 + i * 5 * MIN, v) for i, v in enumerate(levels)]


def _basin(events: list[AlertEvent]) -> list[tuple[str, str, int, int]]:
    return sorted((e.previous_level, e.level, e.at, e.started_at)
                  for e in events if e.rule_id == BASIN)  # fmt: skip


def test_a_lagging_partition_gives_the_basin_alerts_of_the_replay(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    hz001 = _series("HZ001", [4.0] * 3 + [4.7] * 3 + [4.0] * 6 + [4.7] * 9)
    hz002 = _series("HZ002", [3.0] * 9 + [3.4] * 8 + [3.0] * 4)
    registry = load_registry(PACKS / "demo_stations.yaml")
    ruleset = load_ruleset([str(PACKS / "flood.yaml")], registry).ruleset
    expected = _basin(replay(ruleset, hz001 + hz002, flush=False))
    # Cleared at 1:25 by HZ002's first reading below its warning level (the pack's level
    # rule steps down on the reading).
    assert expected == [
        ("none", "orange", T0 + 70 * MIN, T0 + 70 * MIN),
        ("orange", "none", T0 + 85 * MIN, T0 + 70 * MIN),
    ]

    engine = EngineProcess(write_settings(tmp_path, mosquitto.port), tmp_path / "engine.log")
    try:
        engine.start()
        for readings in (hz002, hz001):  # HZ002's backlog first: HZ001's partition lags
            station = readings[0][0]
            payload = json.dumps([{"value": v, "ts": ts} for _, _, ts, v in readings])
            mosquitto_pub(mosquitto, f"vigil/{station}/water_level", payload)
        alerts = tmp_path / "alerts.jsonl"
        deadline = time.monotonic() + 90
        got: list[AlertEvent] = []
        while time.monotonic() < deadline:
            lines = alerts.read_text().splitlines() if alerts.exists() else []
            got = [AlertEvent.from_json(line) for line in lines if line]
            if any(e.rule_id == BASIN and e.level == "none" and e.at == T0 + 85 * MIN
                   for e in got):  # fmt: skip
                break
            time.sleep(0.2)
        assert engine.terminate() == 0
    finally:
        engine.kill()
    # The basin's events are taken in event time, so nothing earlier can follow the
    # one at 1:25: what was delivered by then is the whole story.
    assert _basin(got) == expected, (
        f"{_basin(got)}\n{(tmp_path / 'engine.log').read_text()[-3000:]}"
    )

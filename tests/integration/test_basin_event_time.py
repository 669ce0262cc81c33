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
from collections.abc import Callable
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


def _wait_for(alerts: Path, found: Callable[[AlertEvent], bool], timeout: float = 90) -> None:
    """Until an alert event that ``found`` accepts is in ``alerts`` (JSON lines)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = alerts.read_text().splitlines() if alerts.exists() else []
        if any(found(AlertEvent.from_json(line)) for line in lines if line):
            return
        time.sleep(0.2)
    raise AssertionError(f"no such alert in {alerts} after {timeout:.0f} s")


def _publish(broker: Mosquitto, readings: list[tuple[str, str, int, float]]) -> None:
    """A gauge's readings as one JSON list (a live gauge's last hours, or a backlog)."""
    payload = json.dumps([{"value": v, "ts": ts} for _, _, ts, v in readings])
    mosquitto_pub(broker, f"vigil/{readings[0][0]}/water_level", payload)


def test_a_gauges_late_backlog_gives_the_basin_alerts_of_the_replay(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Issue 10. HZ001 and HZ003 report live; HZ002 (in HZ003's partition, which is
    therefore current) was out of coverage for two hours and uploads its readings as one
    list afterwards. In event time HZ002 was above its warning level from 0:10 to 0:55
    and HZ001 from 0:20 to 0:45: the basin rose at 0:20 and cleared at 0:45, before
    HZ001 and HZ003 raise it again at 1:40. Live, HZ001 had left long before HZ002's
    backlog came: taken on arrival, the first episode was never sent."""
    b = _series("HZ001", [4.0] * 2 + [4.7] * 7 + [4.0] * 9 + [4.7] * 12 + [4.0] * 7)
    a = _series("HZ002", [3.4] * 11 + [3.0] * 26)
    c = _series("HZ003", [2.4] * 18 + [2.8] * 19)
    live = 25  # readings up to 2:00 reported live; the rest after HZ002's backlog
    registry = load_registry(PACKS / "demo_stations.yaml")
    ruleset = load_ruleset([str(PACKS / "flood.yaml")], registry).ruleset
    expected = _basin(replay(ruleset, a + b + c, flush=False))
    assert sorted(((at - T0) // MIN, lvl) for _, lvl, at, _ in expected) == [
        (20, "orange"), (45, "none"), (100, "orange"), (150, "none"),
    ]  # fmt: skip

    engine = EngineProcess(write_settings(tmp_path, mosquitto.port), tmp_path / "engine.log")
    alerts = tmp_path / "alerts.jsonl"
    try:
        engine.start()
        _publish(mosquitto, b[:live])
        _publish(mosquitto, c[:live])
        # The basin rose at 1:40 live: the stage has taken HZ001's first episode.
        _wait_for(alerts, lambda e: e.rule_id == BASIN and e.at == T0 + 100 * MIN)
        _publish(mosquitto, a[:live])  # HZ002's backlog
        # Its own alerts are out, so routed to the basin rules before what follows.
        _wait_for(alerts, lambda e: e.station == "HZ002" and e.at == T0 + 55 * MIN)
        for readings in (b, c, a):
            _publish(mosquitto, readings[live:])
        # The basin's events are taken in event time: once the all-clear at 2:30 is
        # out, what HZ002's backlog raised (earlier in event time) is out too.
        _wait_for(alerts, lambda e: e.rule_id == BASIN and e.at == T0 + 150 * MIN)
        assert engine.terminate() == 0
    finally:
        engine.kill()
    got = [AlertEvent.from_json(line) for line in alerts.read_text().splitlines() if line]
    assert sorted(_basin(got)) == sorted(expected), (
        f"{_basin(got)}\n{(tmp_path / 'engine.log').read_text()[-3000:]}"
    )

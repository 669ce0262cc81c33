"""Durability end to end: SIGKILL the gateway at random moments while readings flow.

A publisher sends numbered readings at QoS 1 through real mosquitto while the engine is
killed with SIGKILL and restarted. The engine acknowledges a message only once its
reading is in the local log, with a persistent session, so the broker redelivers the
rest. Afterwards:

* every published reading is in the telemetry log (at least once);
* the window state counted each reading exactly once (the checkpointed ``accepted``
  counter per station equals the number of distinct readings);
* the alerts delivered are exactly those of a single uninterrupted pass over the same
  readings, none missing and none twice.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from pathlib import Path

import pytest

from connectors.mqtt.mosquitto import Mosquitto
from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch
from engine.evaluation.processor import PartitionProcessor
from engine.runtime.transport.log import DurableLog
from engine.tools.replay import replay
from simulators.publisher import Publisher
from tests.integration.conftest import EngineProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = 1_719_763_200_000
STATIONS = {"HZ001": (2.8, 6.1), "HZ002": (1.9, 5.0), "HZ003": (1.5, 2.85)}
N_STEPS = 600  # per station, one reading a minute of event time
TELEMETRY = "vigil-test-telemetry"


def _readings() -> list[tuple[str, str, int, float]]:
    out = []
    for k in range(N_STEPS):
        # One flood wave per station over the run: up through the levels and back down.
        shape = math.sin(math.pi * k / (N_STEPS - 1)) ** 2
        for station, (base, peak) in STATIONS.items():
            out.append(
                (station, "water_level", T0 + k * 60_000, round(base + (peak - base) * shape, 3))
            )
    return out


def _log_state(data: Path) -> tuple[set[tuple[str, int]], bool, dict[int, bytes]]:
    """(station, ts) in the telemetry log; whether all of it was committed; checkpoints."""
    log = DurableLog(data)
    try:
        seen: set[tuple[str, int]] = set()
        all_committed = True
        blobs: dict[int, bytes] = {}
        for p in range(log.partitions(TELEMETRY) or 0):
            for rec in log.read(TELEMETRY, p, 0, 10**9):
                batch = TelemetryBatch.decode(rec.value or b"")
                seen.update((s, t) for s, _, t, _, _ in batch.rows())
            committed = log.committed("vigil-test", TELEMETRY, p)
            all_committed &= committed == log.highwater(TELEMETRY, p)
            blob = log.blob(f"processor/{TELEMETRY}/{p}")
            if blob is not None:
                blobs[p] = blob
        return seen, all_committed, blobs
    finally:
        log.close()


def _expected_alerts(
    ruleset_source: EngineProcess, readings: list[tuple[str, str, int, float]]
) -> set[tuple[str, str, int, str, str]]:
    from engine.runtime.config import load_settings
    from engine.runtime.services.rules_source import load_rules

    ruleset, _ = load_rules(load_settings(ruleset_source.config))
    return {
        (e.rule_id, e.station, e.at, e.previous_level, e.level)
        for e in replay(ruleset, readings, flush=False)
    }


def test_sigkill_at_random_moments_loses_nothing_and_counts_once(
    engine: EngineProcess, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    readings = _readings()
    rng = random.Random(20240630)
    engine.start()
    publisher = Publisher(mosquitto.host, mosquitto.port, client_id="durability-publisher")
    sender = threading.Thread(target=publisher.publish, args=(readings, 12.0, len(readings)))
    sender.start()
    kills = 0
    while sender.is_alive() or kills < 3:
        time.sleep(rng.uniform(0.5, 3.0))
        engine.kill()
        kills += 1
        engine.start()
    sender.join()
    publisher.close()

    # Drain: run until everything published is in the log and all of it is committed.
    for _ in range(20):
        time.sleep(2.0)
        assert engine.terminate() == 0, (tmp_path / "engine.log").read_text()[-3000:]
        seen, all_committed, blobs = _log_state(tmp_path / "data")
        if len(seen) == len(readings) and all_committed:
            break
        engine.start()
    else:
        pytest.fail(f"log has {len(seen)} of {len(readings)} readings, committed={all_committed}")

    assert seen == {(s, t) for s, _, t, _ in readings}

    # Exactly once in the window state: the kernels' accepted counters.
    from engine.runtime.config import load_settings
    from engine.runtime.services.rules_source import load_rules

    ruleset, _ = load_rules(load_settings(engine.config))
    accepted: dict[str, int] = {}
    for blob in blobs.values():
        proc = PartitionProcessor(ruleset, lateness_ms=0)  # as in the test settings
        proc.restore(blob)
        for station in STATIONS:
            accepted[station] = accepted.get(station, 0) + proc.accepted(
                "flood.river_level", station
            )
    assert accepted == {station: N_STEPS for station in STATIONS}

    # Exactly once to people, and the same alerts as one uninterrupted pass.
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    events = [AlertEvent.from_json(line) for line in lines if line]
    keys = [e.key for e in events]
    assert len(keys) == len(set(keys)), "an alert was delivered twice"
    got = {(e.rule_id, e.station, e.at, e.previous_level, e.level) for e in events}
    assert got == _expected_alerts(engine, readings)
    assert kills >= 3
    assert json.loads(lines[0])["fingerprint"]

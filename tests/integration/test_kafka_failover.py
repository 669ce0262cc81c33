"""Failover on a real Kafka broker: state moves with partitions, nothing lost, nothing twice.

Two ``vigil worker`` processes share 12 telemetry partitions while a load generator
produces a steady stream of flood readings straight to Kafka (the batches
``Topology.produce`` writes). Mid-stream a worker is killed with SIGKILL and a new one
joins, or the broker is restarted. Afterwards, for the same readings:

* the alert events in the alerts topic, deduplicated by their idempotency key, are
  exactly ``engine.tools.replay.replay(ruleset, readings)``: the same multiset of
  (rule_id, station, metric, previous_level, level, at), none missing, none extra;
* what the workers' dispatchers delivered (their JSONL files, together, by key) is the
  same set;
* the kernel state counted every reading exactly once (``accepted`` per station in the
  latest checkpoints equals the number of distinct readings);
* the surviving workers stop on SIGTERM with exit status 0, committed to the end.

A machine without Kafka fails these tests (the fixture fails, it never skips).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.contracts.alerts import AlertEvent
from engine.evaluation.processor import PartitionProcessor
from engine.runtime.kafka.topics import TopicLayout
from engine.tools.replay import replay
from rules.api import load_ruleset
from rules.registry import load_registry
from tests.integration.kafka_fixture import KafkaCluster, start_cluster
from tests.integration.kafka_load import (
    PACKS,
    LoadGenerator,
    WorkerProcess,
    create_topics,
    flood_readings,
    read_alerts,
    read_checkpoints,
    wait_until_committed,
    write_registry,
    write_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 12
N_STATIONS = 96
N_STEPS = 600
STEP_INTERVAL_S = 0.05  # 600 steps of 96 readings in about 30 s


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A single-node Kafka of our own: the broker-restart test restarts it."""
    cluster = start_cluster(tmp_path_factory.mktemp("kafka-failover") / "cluster", brokers=1)
    try:
        yield cluster
    finally:
        cluster.down()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _transition(e: AlertEvent) -> tuple[str, str, str, str, str, int]:
    return (e.rule_id, e.station, e.metric, e.previous_level, e.level, e.at)


class Scenario:
    """One app id's topics, registry, workers and load on the module's broker."""

    def __init__(self, kafka: KafkaCluster, tmp: Path) -> None:
        self.bootstrap = kafka.bootstrap
        self.tmp = tmp
        self.layout = TopicLayout(f"vigil-fo-{uuid.uuid4().hex[:8]}", PARTITIONS)
        self.registry = tmp / "stations.yaml"
        self.stations = write_registry(self.registry, N_STATIONS)
        self.steps = flood_readings(self.stations, N_STEPS)
        self.workers: dict[str, WorkerProcess] = {}
        create_topics(self.bootstrap, self.layout)

    def start_worker(self, name: str) -> WorkerProcess:
        config = write_settings(self.tmp, name, self.layout.app_id, self.registry, PARTITIONS)
        worker = WorkerProcess(self.tmp, name, config, self.bootstrap, _free_port())
        self.workers[name] = worker
        return worker

    def logs(self) -> str:
        return "\n".join(f"--- {n}:\n{w.tail(3000)}" for n, w in self.workers.items())

    def load(self) -> LoadGenerator:
        gen = LoadGenerator(self.bootstrap, self.layout, self.steps, STEP_INTERVAL_S)
        gen.start()
        return gen

    def wait_ready(self, workers: list[WorkerProcess]) -> None:
        for w in workers:
            w.wait_ready()

    def wait_for_step(self, gen: LoadGenerator, fraction: float) -> None:
        target = int(len(self.steps) * fraction)
        while gen.done_steps < target and gen.is_alive():
            time.sleep(0.05)

    def finish(self, gen: LoadGenerator, survivors: list[WorkerProcess]) -> None:
        gen.join(timeout=180)
        assert not gen.is_alive() and gen.error is None, f"load generator: {gen.error!r}"

        def alive() -> str | None:
            dead = [w.name for w in survivors if w.proc.poll() is not None]
            return f"worker(s) {dead} exited early:\n{self.logs()}" if dead else None

        wait_until_committed(self.bootstrap, self.layout, 180, alive)
        for w in survivors:
            assert w.terminate() == 0, f"{w.name} did not stop cleanly:\n{w.tail(20000)}"
        # Clean shutdown committed what was processed: still at the end.
        wait_until_committed(self.bootstrap, self.layout, 5, lambda: None)

    def check(self) -> None:
        registry = load_registry(self.registry)
        ruleset = load_ruleset([str(PACKS / "flood.yaml")], registry).ruleset
        readings = [r for step in self.steps for r in step]
        # replay closes every window "as if time had moved on" past its input; the live
        # engine closes windows only up to its watermark, the last reading's time. Events
        # later than that (e.g. a station falling silent after the input ends) cannot
        # have been sent live.
        end = max(ts for _, _, ts, _ in readings)
        expected = Counter(_transition(e) for e in replay(ruleset, readings) if e.at <= end)
        assert sum(expected.values()) > 100, "the load must make alerts to compare"

        # The alert stream, after dedupe by idempotency key.
        events = read_alerts(self.bootstrap, self.layout.alerts, PARTITIONS)
        by_key = {e.key: e for e in events}
        got = Counter(_transition(e) for e in by_key.values())
        missing, extra = expected - got, got - expected
        assert not missing and not extra, (
            f"missing {sorted(missing)[:5]} ({sum(missing.values())}), "
            f"extra {sorted(extra)[:5]} ({sum(extra.values())})\n{self.logs()}"
        )

        # What the dispatchers delivered, all workers together.
        delivered: dict[str, AlertEvent] = {}
        for w in self.workers.values():
            path = self.tmp / w.name / "alerts.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            keys = [
                json.loads(line)["fingerprint"] + ":" + str(json.loads(line)["at"])
                for line in lines
            ]
            assert len(keys) == len(set(keys)), f"{w.name} delivered a key twice"
            delivered.update((e.key, e) for e in map(AlertEvent.from_json, lines))
        assert Counter(_transition(e) for e in delivered.values()) == expected

        # Exactly once in the kernel state.
        accepted: Counter[str] = Counter()
        blobs = read_checkpoints(self.bootstrap, self.layout.checkpoints, PARTITIONS)
        assert len(blobs) == PARTITIONS
        for blob in blobs.values():
            proc = PartitionProcessor(ruleset, lateness_ms=0)  # as in the load settings
            proc.restore(blob)
            for sid in self.stations:
                accepted[sid] += proc.accepted("flood.river_level", sid)
        assert accepted == {sid: len(self.steps) for sid in self.stations}


@pytest.fixture
def scenario(kafka: KafkaCluster, tmp_path: Path) -> Iterator[Scenario]:
    """A scenario whose worker processes never outlive the test, pass or fail."""
    sc = Scenario(kafka, tmp_path)
    yield sc
    for w in sc.workers.values():
        w.kill()


def test_sigkill_a_worker_then_a_new_one_joins(scenario: Scenario) -> None:
    sc = scenario
    w1, w2 = sc.start_worker("w1"), sc.start_worker("w2")
    sc.wait_ready([w1, w2])  # else the kill may come before w1 has done anything
    gen = sc.load()
    sc.wait_for_step(gen, 0.35)
    w1.kill()
    sc.wait_for_step(gen, 0.6)
    w3 = sc.start_worker("w3")
    sc.finish(gen, [w2, w3])
    assert "checkpoint restored" in w2.log.read_text() + w3.log.read_text()
    sc.check()


def test_broker_restart_mid_stream(kafka: KafkaCluster, scenario: Scenario) -> None:
    sc = scenario
    w1, w2 = sc.start_worker("w1"), sc.start_worker("w2")
    # A restart while a worker starts up is another test: Faust exits on it, for its
    # supervisor to start it again (seen as "exited early" here).
    sc.wait_ready([w1, w2])
    gen = sc.load()
    sc.wait_for_step(gen, 0.4)
    kafka.restart_broker(1)
    sc.finish(gen, [w1, w2])
    sc.check()


def test_lag_web_view(scenario: Scenario) -> None:
    sc = scenario
    w = sc.start_worker("w1")
    gen = sc.load()
    gen.join(timeout=180)
    url = f"http://127.0.0.1:{w.web_port}/vigil/lag/"
    deadline = time.monotonic() + 120
    doc: dict[str, object] = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                doc = json.loads(resp.read())
        except OSError:
            time.sleep(0.5)
            continue
        if doc.get("readings_evaluated") == N_STATIONS * len(sc.steps) and doc["total_lag"] == 0:
            break
        time.sleep(0.5)
    assert doc.get("readings_evaluated") == N_STATIONS * len(sc.steps), f"{doc}\n{w.tail()}"
    parts = doc["partitions"]
    assert isinstance(parts, dict) and sorted(parts, key=int) == [str(p) for p in range(PARTITIONS)]
    assert all(v["lag"] == 0 and v["end"] == v["processed"] for v in parts.values())
    assert w.terminate() == 0

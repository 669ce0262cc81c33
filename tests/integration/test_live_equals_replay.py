"""Live equals replay, end to end: a real gateway fed realistic traffic through real
mosquitto, killed with SIGKILL mid-stream, delivers exactly the alert events that
``vigil replay`` raises for the same readings, basin rules included.

The traffic (``tests.traffic``, twelve gauges over a day, times ending just before now)
is published in arrival order by two paho clients, at the QoS of each device (0 or 1),
compressed in time. Twice, while readings flow, the gateway (``vigil run``) is killed
with SIGKILL and started again. Around each kill the messages go at QoS 1: QoS 0 is at
most once, and what a broker holds for an offline or dying client at QoS 0 is lost by
design, not by Vigil.

Barriers make the phases exact without timing guesses: a QoS 1 message for an unknown
station is published after each phase by each client; the broker delivers a client's
messages in order, the gateway dead-letters the barrier (logging it) only after the
readings received before it are durable. After the last barrier the gateway is stopped
with SIGTERM and started again until every record of its telemetry, alerts and
corroboration topics is committed: everything was evaluated and dispatched.

``alerts.jsonl`` is then compared with ``vigil replay --alerts-out`` over the readings
written to CSV, event for event (fingerprint, levels, ``at``, ``started_at``; events
deduplicated by the dispatcher's key (fingerprint, at, level), up to the cut-off explained in
``tests.differential.compare``); an event delivered twice also fails the test.

``VIGIL_DIFF_SEED=N`` picks another traffic (default 20240630); ``VIGIL_DIFF_LIVE_HOURS``
makes it longer (default 24); ``VIGIL_DIFF_SPEC="backlogs=0,qos0_share=0"`` changes fields
of its ``tests.traffic.TrafficSpec``, to narrow a failure down.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from connectors.mqtt.mosquitto import Mosquitto
from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch
from engine.runtime.transport.log import DurableLog
from rules.api import load_ruleset
from rules.registry import load_registry
from tests.differential.compare import compare, cutoff, timed_compounds
from tests.integration.conftest import EngineProcess, write_settings
from tests.traffic import (
    HOUR_MS,
    REGISTRY,
    RULES,
    STEP_MS,
    Message,
    TrafficSpec,
    generate,
    spec_from_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP_ID = "vigil-test"
LATENESS_MS = 10 * 60_000
SEED = int(os.environ.get("VIGIL_DIFF_SEED", "20240630"))
HOURS = float(os.environ.get("VIGIL_DIFF_LIVE_HOURS", "24"))
#: Simulated time per second of publishing: a day of traffic in about 20 s.
SPEEDUP = 5_000
#: Messages on either side of a kill that go at QoS 1.
AROUND_KILL = 300
REPO = Path(__file__).resolve().parents[2]


class Devices:
    """Two paho clients publishing the traffic in arrival order, each message at its QoS."""

    def __init__(self, broker: Mosquitto) -> None:
        self.clients = []
        for i in range(2):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"devices-{i}")
            c.max_queued_messages_set(0)
            c.max_inflight_messages_set(100)
            c.connect(broker.host, broker.port)
            c.loop_start()
            self.clients.append(c)
        self.barriers = 0

    def _client(self, station: str) -> mqtt.Client:
        return self.clients[sum(station.encode()) % len(self.clients)]

    def publish(self, messages: Sequence[Message]) -> None:
        last: list[mqtt.MQTTMessageInfo] = []
        previous = messages[0].arrival_ms if messages else 0
        for m in messages:
            pause = (m.arrival_ms - previous) / 1000 / SPEEDUP
            previous = m.arrival_ms
            if pause > 0:
                time.sleep(min(pause, 0.05))
            last.append(self._client(m.station).publish(m.topic, m.payload(), qos=m.qos))
        for info in last[-200:]:
            info.wait_for_publish(timeout=60)

    def barrier(self, engine_log: Path, timeout: float = 180.0) -> None:
        """Returns once the gateway has made durable all it received from either client.

        It reads the dead-letter lines of the barrier tokens in the engine's log, so the
        engine runs with its log's rate limit lifted (``_every_log_line``)."""
        self.barriers += 1
        tokens = [f"barrier-{self.barriers}-{i}" for i in range(len(self.clients))]
        for client, token in zip(self.clients, tokens, strict=True):
            client.publish(f"vigil/{token}/water_level", b'{"value": 0}', qos=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = engine_log.read_text(errors="replace") if engine_log.exists() else ""
            if all(f"'{t}'" in text for t in tokens):
                return
            time.sleep(0.2)
        raise AssertionError(f"barrier {self.barriers} not dead-lettered in {timeout}s")

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


@pytest.fixture(autouse=True)
def _every_log_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The barrier reads each token's dead-letter line: no rate limit on the engine's log."""
    monkeypatch.setenv("VIGIL_LOG_BURST", "1000000")


def _all_committed(data: Path) -> tuple[bool, Counter[str], set[tuple[str, str, int]]]:
    """Whether every record of the topics the gateway consumes is committed, the dead
    letters' reasons (their first words), and the readings in the telemetry log."""
    log = DurableLog(data)
    try:
        done = True
        logged: set[tuple[str, str, int]] = set()
        name = f"{APP_ID}-telemetry"
        for p in range(log.partitions(name) or 0):
            for rec in log.read(name, p, 0, 10**9):
                batch = TelemetryBatch.decode(rec.value or b"")
                logged.update((s, m, t) for s, m, t, _, _ in batch.rows())
        for topic in ("telemetry", "alerts", "corroboration"):
            name = f"{APP_ID}-{topic}"
            for p in range(log.partitions(name) or 0):
                done &= (log.committed(APP_ID, name, p) or 0) == log.highwater(name, p)
        reasons: Counter[str] = Counter()
        name = f"{APP_ID}-dead-letter"
        for p in range(log.partitions(name) or 0):
            for rec in log.read(name, p, 0, 10**9):
                reason = dict(rec.headers)["vigil-reason"].decode()
                if "barrier-" not in reason:
                    reasons[" ".join(reason.split()[:4])] += 1
        return done, reasons, logged
    finally:
        log.close()


def _stable(path: Path, quiet_s: float = 3.0, timeout: float = 120.0) -> None:
    """Wait until ``path`` has not grown for ``quiet_s`` (just saves drain rounds)."""
    size, since, deadline = -1, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = path.stat().st_size if path.exists() else 0
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.2)


def test_gateway_through_mosquitto_with_sigkills_raises_what_replay_raises(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    tail_h = 3.0
    span = int((HOURS + tail_h) * HOUR_MS)
    # Times ending half an hour before now: all in the past, none clipped as "ahead".
    start = (int(time.time() * 1000) - span - HOUR_MS // 2) // STEP_MS * STEP_MS
    traffic = generate(spec_from_env(TrafficSpec(seed=SEED, hours=HOURS, tail_h=tail_h)), start)
    messages = list(traffic.messages)
    kills = sorted(int(len(messages) * f) for f in (rng.uniform(0.3, 0.45), rng.uniform(0.6, 0.75)))
    around = min(AROUND_KILL, len(messages) // 10)  # a small VIGIL_DIFF_SPEC traffic
    for k in kills:
        for j in range(k - around, k + around):
            messages[j] = replace(messages[j], qos=1)

    config = write_settings(
        tmp_path,
        mosquitto.port,
        stations=str(REGISTRY),
        rules=[str(RULES)],
        partitions=4,
        lateness_ms=LATENESS_MS,
        batch={"max_readings": 200, "linger_ms": 20},
    )
    engine_log = tmp_path / "engine.log"
    engine = EngineProcess(config, engine_log)
    devices = None
    try:
        engine.start()
        devices = Devices(mosquitto)
        done = 0
        for k in kills:
            devices.publish(messages[done : k - around])
            devices.barrier(engine_log)
            # Readings flow at QoS 1 while the gateway dies and while it is down.
            devices.publish(messages[k - around : k])
            engine.kill()
            devices.publish(messages[k : k + around])
            engine.start()
            devices.barrier(engine_log)
            done = k + around
        devices.publish(messages[done:])
        devices.barrier(engine_log)

        alerts = tmp_path / "alerts.jsonl"
        for _ in range(10):
            _stable(alerts)
            assert engine.terminate() == 0, engine_log.read_text()[-3000:]
            finished, dead_letters, logged = _all_committed(tmp_path / "data")
            if finished:
                break
            engine.start()
        else:
            pytest.fail("the gateway did not commit all it consumed after 10 rounds")
    finally:
        engine.kill()
        if devices is not None:
            devices.close()

    csv_path, replayed_path = tmp_path / "readings.csv", tmp_path / "replay.jsonl"
    traffic.write_csv(csv_path)
    subprocess.run(
        [sys.executable, "-m", "engine.tools.cli", "replay", "--rules", str(RULES),
         "--stations", str(REGISTRY), "--input", str(csv_path),
         "--alerts-out", str(replayed_path)],
        check=True, cwd=REPO, capture_output=True, timeout=300,
    )  # fmt: skip
    live = [AlertEvent.from_json(x) for x in alerts.read_text().splitlines() if x]
    replayed = [AlertEvent.from_json(x) for x in replayed_path.read_text().splitlines() if x]

    qos0 = {(m.station, m.metric, t) for m in messages if m.qos == 0 for t, _ in m.readings}
    lost = {(s, m, t) for s, m, t, _ in traffic.readings()} - logged
    until, timed = (
        cutoff(traffic.end_ms, LATENESS_MS),
        timed_compounds(load_ruleset([str(RULES)], load_registry(REGISTRY)).ruleset),
    )
    diff = compare(live, replayed, until, traffic.disorder_ms, timed)
    assert diff.compared > 50  # the traffic does raise alerts: the comparison means something
    if diff or diff.live_repeats:
        pytest.fail(
            f"VIGIL_DIFF_SEED={SEED}: {traffic.describe()}; SIGKILL at messages {kills}\n"
            f"readings never in the telemetry log: {len(lost)} ({len(lost & qos0)} sent at "
            f"QoS 0); dead letters: {dict(dead_letters)}\n{diff.report(80)}"
        )

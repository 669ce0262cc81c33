"""Through real mosquitto, what used to stop ingest or lose readings without a word:
QoS 0 traffic, poison payloads, an ingest task that fails, a broker that drops.

Each test runs ``vigil run`` (or a gateway script) as a child process, as an operator
would, and reads what it wrote: the telemetry and dead-letter topics of its log, its
alerts file and its stderr.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from connectors.mqtt.mosquitto import Mosquitto
from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch
from engine.evaluation.broker_drops import RULE_ID
from engine.runtime.transport.log import DurableLog
from tests.integration.conftest import EngineProcess, write_settings

pytestmark = pytest.mark.integration

T0 = 1_719_763_200_000
STEP = 5 * 60_000  # the demo gauges report every 5 min
TOPIC = "vigil/{}/water_level"

# One rule that fires on the reading that crosses 100 m: a reading of 150 at the end of a
# station's stream shows, once its alert is out, that everything before it was evaluated
# (a station's readings are evaluated in order).
SENTINEL_RULES = """\
version: 1
rules:
  - id: test.sentinel
    select: {kind: river_gauge}
    metric: water_level
    unit: m
    window: {size: 5m, aggregate: max}
    levels:
      red: {above: 100}
    summary: {en: "{station} {value}", zh: "{station} {value}"}
"""


class _Publisher:
    """A paho client that publishes raw payloads at a chosen QoS, queueing without limit."""

    def __init__(self, broker: Mosquitto, client_id: str = "faults-publisher") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, messages: list[tuple[str, bytes, int]]) -> None:
        """Publish in order; returns once the broker has taken them all."""
        infos = [self.client.publish(topic, payload, qos=qos) for topic, payload, qos in messages]
        for info in infos:
            info.wait_for_publish(timeout=120)
            assert info.is_published(), "the broker did not take every message"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[_Publisher]:
    pub = _Publisher(mosquitto)
    yield pub
    pub.close()


def _reading(station: str, k: int, value: float, qos: int = 1) -> tuple[str, bytes, int]:
    return TOPIC.format(station), json.dumps({"value": value, "ts": T0 + k * STEP}).encode(), qos


def _sentinel_engine(
    tmp: Path, broker: Mosquitto, command: list[str] | None = None, **overrides: object
) -> EngineProcess:
    rules = tmp / "sentinel.yaml"
    rules.write_text(SENTINEL_RULES)
    config = write_settings(tmp, broker.port, rules=[str(rules)], **overrides)
    return EngineProcess(config, tmp / "engine.log", command)


def _alerts(path: Path) -> list[AlertEvent]:
    if not path.exists():
        return []
    return [AlertEvent.from_json(line) for line in path.read_text().splitlines() if line]


def _wait_alerts(
    path: Path, n: int, engine: EngineProcess, timeout: float = 120.0
) -> list[AlertEvent]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = _alerts(path)
        if len(events) >= n:
            return events
        time.sleep(0.2)
    raise AssertionError(
        f"expected {n} alerts, got {_alerts(path)}; engine log:\n{engine.log.read_text()[-4000:]}"
    )


def _topic(data: Path, name: str) -> list[tuple[bytes, dict[str, bytes]]]:
    """(value, headers) of every record of ``vigil-test-<name>`` (the engine is stopped)."""
    log = DurableLog(data)
    try:
        topic = f"vigil-test-{name}"
        return [
            (bytes(r.value or b""), dict(r.headers))
            for p in range(log.partitions(topic) or 0)
            for r in log.read(topic, p, 0, 10**9)
        ]
    finally:
        log.close()


def _telemetry(data: Path) -> list[tuple[str, int, float]]:
    return [
        (station, ts, value)
        for raw, _ in _topic(data, "telemetry")
        for station, _, ts, value, _ in TelemetryBatch.decode(raw).rows()
    ]


def test_qos0_traffic_arrives_whole_and_the_session_holds(
    mosquitto: Mosquitto, publisher: _Publisher, tmp_path: Path
) -> None:
    engine = _sentinel_engine(tmp_path, mosquitto)
    engine.start()
    stations = ("HZ001", "HZ002", "HZ003")
    messages = []
    for k in range(8_400):  # 25,200 readings: 20,160 at QoS 0, every fifth at QoS 1
        for station in stations:
            messages.append(_reading(station, k, 1.0 + k % 7 / 10, qos=1 if k % 5 == 0 else 0))
    messages += [_reading(station, 8_400, 150.0) for station in stations]
    publisher.publish(messages)

    events = _wait_alerts(tmp_path / "alerts.jsonl", 3, engine)
    assert sorted(e.station for e in events) == list(stations)
    assert {(e.level, e.value) for e in events} == {("red", 150.0)}
    assert engine.terminate() == 0
    readings = _telemetry(tmp_path / "data")
    assert len(readings) == len(set(readings)) == len(messages)
    log = engine.log.read_text()
    assert "MQTT disconnected" not in log, log[-3000:]


SHOWN = "999999999999999999...9999999999999999999"
POISONS = {
    "value-401-digits": (
        b'{"value": ' + b"9" * 401 + b', "ts": 1719763200000}',
        f"value {SHOWN} is out of range for a float",
    ),
    "ts-1e300": (
        b'{"value": 1.0, "ts": 1e300}',
        "ts 1e+300 is out of range (epoch ms of the years 1 to 9999)",
    ),
    "nested-100k": (
        b"[" * 100_000 + b"]" * 100_000,
        "payload is not JSON this decoder can read: nested too deeply",
    ),
}


def test_poison_messages_are_dead_lettered_and_the_stream_goes_on(
    mosquitto: Mosquitto, publisher: _Publisher, tmp_path: Path
) -> None:
    # Room for the 200 KB of brackets: this is the decoder's test, not the size cap's.
    engine = _sentinel_engine(tmp_path, mosquitto, storage={"max_payload_bytes": 1_000_000})
    engine.start()
    poison = [(TOPIC.format("HZ001"), raw, 1) for raw, _ in POISONS.values()]
    valid = [_reading("HZ001", k, 1.0 + k / 10) for k in range(11)] + [_reading("HZ001", 11, 150)]
    publisher.publish(poison + valid)

    events = _wait_alerts(tmp_path / "alerts.jsonl", 1, engine)
    assert [(e.station, e.level, e.at) for e in events] == [("HZ001", "red", T0 + 11 * STEP)]
    assert engine.terminate() == 0

    expected = [("HZ001", json.loads(p)["ts"], float(json.loads(p)["value"])) for _, p, _ in valid]
    assert sorted(_telemetry(tmp_path / "data")) == sorted(expected)
    dead = _topic(tmp_path / "data", "dead-letter")
    assert sorted((headers["vigil-reason"].decode(), raw) for raw, headers in dead) == sorted(
        (reason, raw) for raw, reason in POISONS.values()
    )
    assert "Traceback" not in engine.log.read_text()


def test_a_failing_ingest_ends_the_gateway_with_a_nonzero_status(
    mosquitto: Mosquitto, publisher: _Publisher, tmp_path: Path
) -> None:
    script = Path(__file__).parent / "apps" / "failing_log_gateway.py"
    failing = _sentinel_engine(tmp_path, mosquitto, [sys.executable, str(script)])
    failing.start()
    publisher.publish([_reading("HZ002", 0, 150.0)])
    assert failing.proc is not None
    status = failing.proc.wait(timeout=120)
    log = failing.log.read_text()
    assert status != 0, log[-3000:]
    assert "MQTT ingest failed" in log and "Traceback" in log, log[-3000:]
    assert "OSError: injected: the telemetry log cannot be written" in log

    # Never acknowledged, so the broker hands the reading to the restarted gateway.
    engine = _sentinel_engine(tmp_path, mosquitto)
    engine.start()
    events = _wait_alerts(tmp_path / "alerts.jsonl", 1, engine)
    assert [(e.station, e.level, e.at) for e in events] == [("HZ002", "red", T0)]
    assert engine.terminate() == 0


def _persistent_session(broker: Mosquitto, client_id: str, topic: str) -> None:
    """Leave a persistent session subscribed to ``topic`` at QoS 1, its client gone."""
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    assert subscribed.wait(10), "no SUBACK"
    client.disconnect()
    client.loop_stop()


STOCK = {"max_queued_messages": "1000", "max_inflight_messages": "20", "sys_interval": "1"}


def test_a_stock_broker_dropping_readings_raises_a_gateway_health_alert(tmp_path: Path) -> None:
    with Mosquitto(override=STOCK) as broker:
        engine = _sentinel_engine(tmp_path, broker)
        engine.start()  # the gateway's persistent session now exists
        assert engine.terminate() == 0
        publisher = _Publisher(broker)
        try:
            # While the gateway is away its session queues 1000 messages, drops the rest.
            publisher.publish([_reading("HZ001", k, 1.0) for k in range(3_000)])
            engine.start()
            events = _wait_alerts(tmp_path / "alerts.jsonl", 1, engine)
            health = [e for e in events if e.rule_id == RULE_ID]
            assert len(health) == 1, events
            alert = health[0]
            assert (alert.state, alert.level, alert.previous_level) == ("firing", "yellow", "none")
            assert alert.value == 2000.0 and alert.labels["dropped_total"] == "2000"
            assert alert.labels["broker"] == f"127.0.0.1:{broker.port}"
            assert alert.station == "vigil-test-gateway"
            assert engine.terminate() == 0
            assert "ERROR" in engine.log.read_text() and "dropped 2000 messages" in (
                engine.log.read_text()
            )

            # A second burst while away: at least 500 dropped (more if some of the first
            # round's readings were still unacknowledged at the stop, and so queued). Only
            # the new drops are reported, in the same episode: the count reported is kept
            # across restarts.
            publisher.publish([_reading("HZ001", k, 1.0) for k in range(3_000, 4_500)])
            engine.start()
            events = _wait_alerts(tmp_path / "alerts.jsonl", 2, engine)
            second = [e for e in events if e.rule_id == RULE_ID][1]
            assert (second.level, second.previous_level) == ("yellow", "yellow")
            total = int(second.labels["dropped_total"])
            assert total >= 2500 and second.value == total - 2000
            assert second.started_at == alert.started_at

            # While the gateway runs: another client's persistent session overflows. The
            # count is broker-wide; the running gateway reports the rise when the broker
            # next publishes it.
            # The broker publishes its count every second: a burst that takes longer under
            # load is reported in several rises, which together make the 500.
            _persistent_session(broker, "away-subscriber", "other/#")
            publisher.publish([("other/x", b"1", 1)] * 1_500)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                later = [e for e in _alerts(tmp_path / "alerts.jsonl") if e.rule_id == RULE_ID][2:]
                if later and later[-1].labels["dropped_total"] == str(total + 500):
                    break
                time.sleep(0.2)
            assert later and later[-1].labels["dropped_total"] == str(total + 500), later
            assert sum(e.value for e in later) == 500.0
            assert all((e.level, e.previous_level) == ("yellow", "yellow") for e in later)
            assert engine.terminate() == 0
        finally:
            publisher.close()
            engine.kill()

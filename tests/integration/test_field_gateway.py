"""SL 651 and HJ 212 stations (the simulators, over real TCP) against a running gateway
(``vigil run`` with ``sl651:`` and ``hj212:`` configured, real mosquitto beside them).

* What the stations sent is in the telemetry log, under the Vigil stations of the
  registry, and the alerts equal ``vigil replay`` of the readings the simulators
  meant to send (computed from their value functions, not by decoding frames).
* Every report was answered with the protocol's reply; a bad CRC and a wrong password
  are on the dead-letter topic with reason, bytes and peer, and never ingested.
* SIGKILL of the gateway mid-stream loses no acknowledged report: every report whose
  acknowledgement a station received has its readings in the log after restarts.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors import hj212, sl651
from connectors.framing import Splitter
from connectors.hj212.server import Hj212Framing
from connectors.mqtt.mosquitto import Mosquitto
from connectors.sl651.server import Sl651Framing
from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch
from engine.runtime.transport.log import DurableLog
from engine.tools.replay import replay
from simulators.field_episode import EpisodeAirStation, FloodedReservoirRtu
from simulators.tcp_station import Fault, run_station
from tests.integration.conftest import PACKS, EngineProcess, write_settings

pytestmark = [pytest.mark.integration]

START = datetime(2024, 7, 1, 0, 0)  # the stations' clock, China Standard Time
CST = timedelta(hours=8)
RTU_REPORTS = 289  # 24 h of 5-minute timed reports
AIR_REPORTS = 25  # 24 h of hourly reports (real-time and hourly data)
#: HJ 212 codes -> Vigil metrics, written out here as the reference (not codes.POLLUTANTS).
AIR_METRICS = {"a34004": "pm2_5", "a34002": "pm10", "a21026": "so2", "a21004": "no2",
               "a21005": "co", "a05024": "o3"}  # fmt: skip
TELEMETRY = "vigil-test-telemetry"
Row = tuple[str, str, int, float]


def _ms(local: datetime) -> int:
    return int((local - CST - datetime(1970, 1, 1)).total_seconds() * 1000)


def _rtu_rows(rtu: FloodedReservoirRtu, t: datetime) -> list[Row]:
    rain, level, volt = rtu.values(t)
    ts = _ms(t)
    return [("SK01", "rainfall", ts, rain), ("SK01", "reservoir_level", ts, level),
            ("SK01", "voltage", ts, volt)]  # fmt: skip


def _air_rows(air: EpisodeAirStation, t: datetime, qn_suffix: str | None = None) -> list[Row]:
    """A report's rows: real-time (QN suffix 000) and, on the hour, the hour before's
    means (001); ``qn_suffix`` picks one packet's."""
    values = air.values(t)
    rows = []
    if qn_suffix in (None, "000"):
        rows += [("AQ01", f"{AIR_METRICS[c]}_rt", _ms(t), v) for c, v in values.items()]
    if t.minute == 0 and qn_suffix in (None, "001"):
        rows += [("AQ01", AIR_METRICS[c], _ms(t - timedelta(hours=1)), v)
                 for c, v in values.items()]  # fmt: skip
    return rows


def _settings(
    tmp: Path, mqtt_port: int, sl651_port: int = 0, hj212_port: int = 0, **more: object
) -> Path:
    return write_settings(
        tmp, mqtt_port,
        stations=str(PACKS / "demo_field_stations.yaml"),
        rules=[str(PACKS / "demo_field.yaml")],
        sl651={"port": sl651_port}, hj212={"port": hj212_port}, **more,
    )  # fmt: skip


def _readings_received(web_port: int) -> dict[tuple[str, str], float]:
    """``vigil_readings_received_total`` by (connector, kind), from ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return {
        (s.labels["connector"], s.labels["kind"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "vigil_readings_received_total"
    }


def _log(data: Path) -> tuple[set[Row], list[tuple[bytes, dict[str, bytes]]]]:
    """(rows in the telemetry log, dead letters with their headers)."""
    log = DurableLog(data)
    try:
        rows: set[Row] = set()
        for p in range(log.partitions(TELEMETRY) or 0):
            for rec in log.read(TELEMETRY, p, 0, 10**9):
                batch = TelemetryBatch.decode(rec.value or b"")
                rows.update((s, m, t, v) for s, m, t, v, _ in batch.rows())
        topic = "vigil-test-dead-letter"
        dead = [
            (rec.value or b"", dict(rec.headers))
            for p in range(log.partitions(topic) or 0)
            for rec in log.read(topic, p, 0, 10**9)
        ]
        return rows, dead
    finally:
        log.close()


class Replies:
    """What a station heard back, split into frames."""

    def __init__(self, protocol: str) -> None:
        framing = Sl651Framing() if protocol == "sl651" else Hj212Framing()
        self.splitter = Splitter(framing, 1 << 16)
        self.frames: list[bytes] = []

    def __call__(self, chunk: bytes) -> None:
        self.frames += [raw for kind, raw, _ in self.splitter.feed(chunk) if kind == "frame"]


def _alerts(path: Path) -> set[tuple[str, str, int, str, str]]:
    if not path.exists():
        return set()
    events = [AlertEvent.from_json(line) for line in path.read_text().splitlines() if line]
    return {(e.rule_id, e.station, e.at, e.previous_level, e.level) for e in events}


def test_field_stations_reach_alerts_like_replay(tmp_path: Path, mosquitto: Mosquitto) -> None:
    web_port = _free_port()
    engine = EngineProcess(
        _settings(tmp_path, mosquitto.port, web_port=web_port), tmp_path / "engine.log"
    )
    engine.start()
    try:
        ports = engine.listening("sl651"), engine.listening("hj212")
        rtu, air = FloodedReservoirRtu(START), EpisodeAirStation(START)
        rtu_replies, air_replies = Replies("sl651"), Replies("hj212")
        bad = [FloodedReservoirRtu(START, faults=frozenset({Fault.BAD_CRC})),
               FloodedReservoirRtu(START, faults=frozenset({Fault.WRONG_PASSWORD}))]  # fmt: skip

        async def stations() -> None:
            await asyncio.gather(
                run_station("127.0.0.1", ports[0], rtu.report, START, timedelta(minutes=5),
                            RTU_REPORTS, 0.002, on_reply=rtu_replies),
                run_station("127.0.0.1", ports[1], air.report, START, timedelta(hours=1),
                            AIR_REPORTS, 0.02, on_reply=air_replies),
                *(run_station("127.0.0.1", ports[0], b.report, START, timedelta(minutes=5), 1,
                              0.0) for b in bad),
            )  # fmt: skip

        asyncio.run(stations())
        # Every report answered (run_station waits for the replies before hanging up).
        acks = [sl651.decode(f) for f in rtu_replies.frames]
        assert len(acks) == RTU_REPORTS
        assert all(isinstance(a, sl651.Frame) and a.direction == "down" for a in acks)
        responses = [hj212.decode(f) for f in air_replies.frames]
        assert len(responses) == 2 * AIR_REPORTS  # real-time and hourly data each hour
        assert {r.cn for r in responses if isinstance(r, hj212.Packet)} == {"9014"}

        expected = [row for i in range(RTU_REPORTS)
                    for row in _rtu_rows(rtu, START + i * timedelta(minutes=5))]  # fmt: skip
        expected += [row for i in range(AIR_REPORTS)
                     for row in _air_rows(air, START + i * timedelta(hours=1))]  # fmt: skip
        from engine.runtime.config import load_settings
        from engine.runtime.services.rules_source import load_rules

        ruleset, _ = load_rules(load_settings(engine.config))
        want = {(e.rule_id, e.station, e.at, e.previous_level, e.level)
                for e in replay(ruleset, expected, flush=False)}  # fmt: skip
        assert {w[0] for w in want} == {"demo.reservoir_level", "demo.pm2_5_hourly"}
        deadline = time.monotonic() + 120
        while _alerts(tmp_path / "alerts.jsonl") != want and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _alerts(tmp_path / "alerts.jsonl") == want
        # Counted like MQTT's readings, by station kind (they were not counted at all).
        received = _readings_received(web_port)
        assert {connector for connector, _ in received} == {"field"}
        assert sum(received.values()) == len(expected)
        assert "unknown" not in {kind for _, kind in received}
    finally:
        assert engine.terminate() == 0, (tmp_path / "engine.log").read_text()[-3000:]
    rows, dead = _log(tmp_path / "data")
    assert rows == set(expected)
    reasons = sorted(h["vigil-reason"].decode() for _, h in dead)
    assert reasons[0].startswith("CRC declared ")
    assert reasons[1] == "wrong password for SL 651 station 0012345678 (SK01)"
    assert len(reasons) == 2
    for raw, headers in dead:
        assert raw[:2] == b"\x7e\x7e"
        assert headers["vigil-source"].decode().startswith("sl651 127.0.0.1:")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigkill_loses_no_acknowledged_report(tmp_path: Path, mosquitto: Mosquitto) -> None:
    ports = _free_port(), _free_port()
    engine = EngineProcess(_settings(tmp_path, mosquitto.port, *ports), tmp_path / "engine.log")
    engine.start()
    rtu, air = FloodedReservoirRtu(START), EpisodeAirStation(START)
    sent_at: dict[int, datetime] = {}  # SL 651 serial -> the report's time

    def rtu_report(t: datetime) -> list[bytes]:
        frames = rtu.report(t)
        sent_at[rtu.serial] = t
        return frames

    rtu_replies, air_replies = Replies("sl651"), Replies("hj212")

    async def both() -> None:
        await asyncio.gather(
            run_station("127.0.0.1", ports[0], rtu_report, START, timedelta(minutes=5), 1500,
                        0.01, on_reply=rtu_replies),
            run_station("127.0.0.1", ports[1], air.report, START, timedelta(hours=1), 150, 0.1,
                        on_reply=air_replies),
        )  # fmt: skip

    def stations() -> None:
        asyncio.run(both())

    sender = threading.Thread(target=stations)
    sender.start()
    rng = random.Random(651212)
    kills = 0
    try:
        while sender.is_alive() and kills < 3:
            time.sleep(rng.uniform(1.0, 4.0))
            engine.kill()
            kills += 1
            engine.start()
        sender.join(600)
        assert not sender.is_alive()
    finally:
        assert engine.terminate() == 0, (tmp_path / "engine.log").read_text()[-3000:]
    rows, _ = _log(tmp_path / "data")
    acked_rtu = set()
    for f in rtu_replies.frames:
        ack = sl651.decode(f)
        assert isinstance(ack, sl651.Frame) and ack.body is not None
        acked_rtu.add(sent_at[ack.body.serial])
    acked_air = set()  # (report time, QN suffix: which packet)
    for f in air_replies.frames:
        reply = hj212.decode(f)
        assert isinstance(reply, hj212.Packet)
        qn = reply.header["QN"]
        acked_air.add((datetime.strptime(qn[:14], "%Y%m%d%H%M%S"), qn[14:]))
    assert kills == 3 and len(acked_rtu) > 100 and len(acked_air) > 10
    missing = [t for t in sorted(acked_rtu) if not set(_rtu_rows(rtu, t)) <= rows]
    assert missing == [], f"{len(missing)} acknowledged SL 651 reports not in the log"
    missing_air = [a for a in sorted(acked_air) if not set(_air_rows(air, *a)) <= rows]
    assert missing_air == [], f"{len(missing_air)} acknowledged HJ 212 reports not in the log"

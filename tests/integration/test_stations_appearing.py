"""Stations that come online one by one after the gateway started, on the field paths
(SL 651 RTUs, HJ 212 stations over TCP) and the NB-IoT path (CoAP devices), on a
gateway with several partitions: each station's rise through its levels alerts, and the
alerts equal ``vigil replay`` of the telemetry log (``tests.differential.compare``).

A station appears in wall time (its first report is sent once the stations before it
have reported for a while, their readings evaluated) and in event time (its readings
start later than theirs: a station installed during the flood), as a new RTU or device
added to a running gateway does. Every station then reports in step with the others up
to the common end, each report waiting for its protocol's reply (durable in the log).
"""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from connectors.framing import Splitter
from connectors.hj212.server import Hj212Framing
from connectors.mqtt.mosquitto import Mosquitto
from connectors.sl651.server import Sl651Framing
from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch
from engine.runtime.transport.log import DurableLog
from simulators.field_episode import EpisodeAirStation, FloodedReservoirRtu
from tests.differential.compare import compare, cutoff
from tests.integration.conftest import PACKS, EngineProcess, write_settings

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
START = datetime(2024, 7, 1, 0, 0)  # the stations' clock, China Standard Time
CST = timedelta(hours=8)
STEP = timedelta(minutes=5)
APPEAR = timedelta(hours=1)  # station k's first report: START + k * APPEAR
END = START + timedelta(hours=9)  # every station reports up to here
TELEMETRY = "vigil-test-telemetry"
#: (Vigil station, SL 651 address) of the RTUs, (station, MN) of the air stations, in the
#: order they come online (interleaved: the protocols' servers see new stations too).
RTUS = [("SK01", "0012345678"), ("SK02", "0012345679"), ("SK03", "0012345680")]
AIRS = [("AQ01", "AQ0000000001"), ("AQ02", "AQ0000000002")]
AIR_METRICS = {"a34004": "pm2_5", "a34002": "pm10", "a21026": "so2", "a21004": "no2",
               "a21005": "co", "a05024": "o3"}  # fmt: skip
Row = tuple[str, str, int, float]


def _ms(local: datetime) -> int:
    return int((local - CST - datetime(1970, 1, 1)).total_seconds() * 1000)


def _field_registry(path: Path) -> Path:
    """The demo's reservoir and air station, several of each."""
    demo = yaml.safe_load((PACKS / "demo_field_stations.yaml").read_text())["stations"]
    reservoir, air = demo[0], demo[1]
    stations = [{**reservoir, "id": sid, "sl651": {"address": address, "password": "1234"}}
                for sid, address in RTUS]  # fmt: skip
    stations += [{**air, "id": sid, "hj212": {"mn": mn, "password": "123456"}}
                 for sid, mn in AIRS]  # fmt: skip
    path.write_text(yaml.safe_dump({"stations": stations}, allow_unicode=True))
    return path


class _Station:
    """One station's TCP connection: sends a report's frames, waits for their replies."""

    def __init__(self, protocol: str, port: int, report, rows) -> None:  # type: ignore[no-untyped-def]
        framing = Sl651Framing() if protocol == "sl651" else Hj212Framing()
        self.splitter = Splitter(framing, 1 << 16)
        self.port, self.report, self.rows = port, report, rows
        self.sent: list[Row] = []

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def send(self, t: datetime) -> None:
        frames = self.report(t)
        for frame in frames:
            self.writer.write(frame)
        await self.writer.drain()
        replies = 0
        while replies < len(frames):  # one reply per frame, once its readings are durable
            chunk = await asyncio.wait_for(self.reader.read(4096), 60)
            assert chunk, "the gateway closed the connection"
            replies += sum(kind == "frame" for kind, _, _ in self.splitter.feed(chunk))
        self.sent += self.rows(t)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _rtu(port: int, k: int, address: str, sid: str) -> _Station:
    rtu = FloodedReservoirRtu(START + k * APPEAR, time_to_peak_h=3.0, station=address)

    def rows(t: datetime) -> list[Row]:
        rain, level, volt = rtu.values(t)
        return [(sid, "rainfall", _ms(t), rain), (sid, "reservoir_level", _ms(t), level),
                (sid, "voltage", _ms(t), volt)]  # fmt: skip

    return _Station("sl651", port, rtu.report, rows)


def _air(port: int, k: int, mn: str, sid: str) -> _Station:
    air = EpisodeAirStation(START + k * APPEAR, peak_pm2_5=180.0, time_to_peak_h=4.0, mn=mn)

    def rows(t: datetime) -> list[Row]:
        values = air.values(t)
        out = [(sid, f"{AIR_METRICS[c]}_rt", _ms(t), v) for c, v in values.items()]
        if t.minute == 0:  # the hourly data of the hour before
            out += [(sid, AIR_METRICS[c], _ms(t - timedelta(hours=1)), v)
                    for c, v in values.items()]  # fmt: skip
        return out

    return _Station("hj212", port, air.report, rows)


def _telemetry(data: Path) -> set[Row]:
    log = DurableLog(data)
    try:
        return {
            (s, m, t, v)
            for p in range(log.partitions(TELEMETRY) or 0)
            for rec in log.read(TELEMETRY, p, 0, 10**9)
            for s, m, t, v, _ in TelemetryBatch.decode(rec.value or b"").rows()
        }
    finally:
        log.close()


def _replay(tmp: Path, rows: set[Row], rules: Path, stations: Path) -> list[AlertEvent]:
    """``vigil replay`` of ``rows``, as an operator runs it."""
    readings, out = tmp / "readings.csv", tmp / "replay.jsonl"
    with readings.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["station", "metric", "ts", "value"])
        w.writerows(sorted(rows, key=lambda r: (r[2], r[0], r[1])))
    subprocess.run(
        [sys.executable, "-m", "engine.tools.cli", "replay", "--rules", str(rules),
         "--stations", str(stations), "--input", str(readings), "--alerts-out", str(out)],
        check=True, cwd=REPO, capture_output=True, timeout=300,
    )  # fmt: skip
    return [AlertEvent.from_json(x) for x in out.read_text().splitlines() if x]


def _alerts(path: Path) -> list[AlertEvent]:
    if not path.exists():
        return []
    return [AlertEvent.from_json(x) for x in path.read_text().splitlines() if x]


def test_field_stations_coming_online_one_by_one_alert_like_replay(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    stations_path = _field_registry(tmp_path / "stations.yaml")
    rules = PACKS / "demo_field.yaml"
    config = write_settings(
        tmp_path, mosquitto.port, partitions=3, stations=str(stations_path),
        rules=[str(rules)], sl651={"port": 0}, hj212={"port": 0},
    )  # fmt: skip
    engine = EngineProcess(config, tmp_path / "engine.log")
    engine.start()
    order = [("sl651", RTUS[0]), ("hj212", AIRS[0]), ("sl651", RTUS[1]), ("hj212", AIRS[1]),
             ("sl651", RTUS[2])]  # fmt: skip
    try:
        ports = {"sl651": engine.listening("sl651"), "hj212": engine.listening("hj212")}

        async def run() -> list[_Station]:
            online: list[_Station] = []
            t = START
            while t <= END:
                k = len(online)
                if k < len(order) and t == START + k * APPEAR:  # the next station appears
                    protocol, (sid, identity) = order[k]
                    make = _rtu if protocol == "sl651" else _air
                    station = make(ports[protocol], k, identity, sid)
                    await station.open()
                    online.append(station)
                await asyncio.gather(*(s.send(t) for s in online))
                t += STEP
            for s in online:
                await s.close()
            return online

        online = asyncio.run(run())
        sent = {row for s in online for row in s.sent}
        alerts_path = tmp_path / "alerts.jsonl"
        replayed = _replay(tmp_path, sent, rules, stations_path)
        until = cutoff(_ms(END), 0)
        # Each station rises through its levels after it appeared.
        assert {e.station for e in replayed if e.level != "none"} == {s for _, (s, _) in order}
        deadline = time.monotonic() + 120
        while (diff := compare(_alerts(alerts_path), replayed, until)) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.5)
        assert not diff, diff.report()
        assert not diff.live_repeats and diff.compared > 10
    finally:
        assert engine.terminate() == 0, (tmp_path / "engine.log").read_text()[-3000:]
    # What was replayed is the telemetry log: the gateway took exactly what was sent.
    assert _telemetry(tmp_path / "data") == sent


#: NB-IoT waterlogging sensors on river gauges, in the order they come online:
#: (station, IMEI, base, peak) of each gauge's flood wave (m).
GAUGES = [
    ("HZ001", "861000000000101", 3.0, 5.2),
    ("HZ002", "861000000000102", 2.0, 4.3),
    ("HZ003", "861000000000103", 1.5, 3.6),
    ("HZ004", "861000000000104", 2.5, 4.4),
]
NB_STEP_S = 300


def _gauge_registry(path: Path) -> Path:
    """The demo's three river gauges of one basin, and a fourth like the second."""
    stations = yaml.safe_load((PACKS / "demo_stations.yaml").read_text())["stations"]
    stations.append({**stations[1], "id": "HZ004", "name": "Gauge 4"})
    path.write_text(yaml.safe_dump({"stations": stations}, allow_unicode=True))
    return path


def _nb_level(k: int, t_s: int, start_s: int, end_s: int) -> float:
    """Gauge k's level at ``t_s``: base, up to its peak halfway between its start and
    the end, and back; in whole mm, as the gateway decodes it (``raw * scale + add``)."""
    _, _, base, peak = GAUGES[k]
    first, span = start_s + k * 3600, end_s - (start_s + k * 3600)
    x = (t_s - first) / span
    mm = round(1000 * (base + (peak - base) * (1 - abs(2 * x - 1))))
    return float(mm) * 0.001 + 0.0


def test_nbiot_devices_coming_online_one_by_one_alert_like_replay(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    import aiocoap

    from connectors.nbiot.products import load_products
    from connectors.nbiot.seal import seal
    from simulators.nbiot_fleet import encode
    from tests.integration.test_nbiot_gateway import Coap, NbiotEngine, free_udp_port

    waterlog = load_products().get("waterlog-v1")
    keys = {imei: bytes([k]) * 16 for k, (_, imei, _, _) in enumerate(GAUGES, start=1)}
    devices = tmp_path / "devices.yaml"
    devices.write_text(yaml.safe_dump({"devices": [
        {"identity": imei, "station": sid, "product": "waterlog-v1", "key_hex": keys[imei].hex(),
         "metrics": {"water_depth": "water_level"}}
        for sid, imei, _, _ in GAUGES
    ]}))  # fmt: skip
    stations_path = _gauge_registry(tmp_path / "stations.yaml")
    rules = PACKS / "flood.yaml"
    coap_port = free_udp_port()
    config = write_settings(
        tmp_path, mosquitto.port, partitions=3, stations=str(stations_path),
        rules=[str(rules)], nbiot={"coap_port": coap_port, "devices": str(devices)},
    )  # fmt: skip
    engine = NbiotEngine(config, tmp_path / "engine.log")
    # Current readings (the gateway's clock checks them): the 9 hours that just ended.
    end_s = int(time.time()) // NB_STEP_S * NB_STEP_S - 600
    start_s = end_s - 9 * 3600
    sent: set[Row] = set()

    async def run() -> None:
        counters = dict.fromkeys(keys, 0)
        async with Coap(coap_port) as coap:
            for t in range(start_s, end_s + 1, NB_STEP_S):
                online = [k for k in range(len(GAUGES)) if t >= start_s + k * 3600]

                async def upload(k: int, t: int = t) -> None:
                    sid, imei, _, _ = GAUGES[k]
                    level = _nb_level(k, t, start_s, end_s)
                    counters[imei] += 1
                    body = encode(waterlog, [(t, {"water_depth": level, "battery_v": 3.6})])
                    sealed = seal(keys[imei], imei, counters[imei], body)
                    resp = await coap.post(f"nb/{imei}", sealed)
                    assert resp.code == aiocoap.CHANGED, resp.payload
                    sent.add((sid, "water_level", t * 1000, level))

                await asyncio.gather(*(upload(k) for k in online))

    try:
        engine.start()
        asyncio.run(run())
        replayed = _replay(tmp_path, sent, rules, stations_path)
        until = cutoff(end_s * 1000, 0)
        assert {e.station for e in replayed if e.level != "none"} >= {g[0] for g in GAUGES}
        alerts_path = tmp_path / "alerts.jsonl"
        deadline = time.monotonic() + 120
        while (diff := compare(_alerts(alerts_path), replayed, until)) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.5)
        assert not diff, diff.report()
        assert not diff.live_repeats and diff.compared > 10
    finally:
        assert engine.terminate() == 0, (tmp_path / "engine.log").read_text()[-3000:]
    # What was replayed is the telemetry log: the gateway took exactly what was sent.
    assert {r for r in _telemetry(tmp_path / "data") if r[1] == "water_level"} == sent

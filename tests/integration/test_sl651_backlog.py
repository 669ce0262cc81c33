"""An SL 651 RTU's backlog after a coverage gap, over real TCP into a running gateway.

The reservoir RTU SK01 reports, falls silent while its neighbour SK02 goes on for a
day, then uploads what it stored: hours of timed reports (32), added reports (33) sent
when its level rose past a step, and some reports as multi-packet (M3) messages, all
on one connection and cut into TCP writes at random places, so frames and packets are
split across the server's reads. The common frames go through the numba batch decoder
(``connectors.sl651.batch``), the packets through the reference decoder and the
reassembler.

The reference is plain: the readings the frames were built from (not decoded). The
log holds exactly them, every message is acknowledged once, and the level alerts equal
those of ``vigil replay`` of the readings, event for event. The gap itself is the one
documented difference (README, "A silent device that uploads its backlog"): the live
gateway raised SK01's silence once and clears it once.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from connectors import sl651
from connectors.framing import Splitter
from connectors.mqtt.mosquitto import Mosquitto
from connectors.sl651.batch import decode_many
from connectors.sl651.batch_kernel import FALLBACK, OK
from connectors.sl651.frame import crc16
from connectors.sl651.server import Sl651Framing
from engine.contracts.alerts import AlertEvent
from engine.runtime.config import load_settings
from engine.runtime.services.rules_source import load_rules
from engine.tools.replay import replay
from simulators.field_episode import FloodedReservoirRtu
from tests.integration.conftest import PACKS, EngineProcess, write_settings
from tests.integration.test_field_gateway import CST, START, _log

pytestmark = [pytest.mark.integration]

STEP = timedelta(minutes=5)
Row = tuple[str, str, int, float]
SK02 = "0012345679"


def _ms(local: datetime) -> int:
    return int((local - CST - datetime(1970, 1, 1)).total_seconds() * 1000)


def _bcd(value: float, decimals: int, size: int) -> bytes:
    return bytes.fromhex(f"{round(value * 10**decimals):0{2 * size}d}")


class BacklogRtu:
    """Builds an RTU's report frames by hand (HEX mode, uplink), keeping the readings
    each one carries as the reference."""

    def __init__(self, vigil_id: str, address: str, wave: FloodedReservoirRtu) -> None:
        self.vigil_id, self.address, self.wave = vigil_id, address, wave
        self.serial = 0
        self.rows: list[Row] = []

    def _body(self, t: datetime, sent: datetime, elements: bytes) -> bytes:
        self.serial = self.serial % 65535 + 1
        return (
            self.serial.to_bytes(2, "big") + bytes.fromhex(sent.strftime("%y%m%d%H%M%S"))
            + b"\xf1\xf1" + bytes.fromhex(self.address) + b"\x4b"
            + b"\xf0\xf0" + bytes.fromhex(t.strftime("%y%m%d%H%M")) + elements
        )  # fmt: skip

    def _head(self, function: int) -> bytes:
        return (
            b"\x7e\x7e\x01"
            + bytes.fromhex(self.address)
            + bytes.fromhex("1234")
            + bytes([function])
        )

    def timed(self, t: datetime, sent: datetime) -> bytes:
        """A timed report (32): 5-minute rain, reservoir level, voltage."""
        rain, level, volt = self.wave.values(t)
        ts = _ms(t)
        self.rows += [(self.vigil_id, "rainfall", ts, rain),
                      (self.vigil_id, "reservoir_level", ts, level),
                      (self.vigil_id, "voltage", ts, volt)]  # fmt: skip
        elements = (b"\x22\x19" + _bcd(rain, 1, 3) + b"\x3b\x23" + _bcd(level, 3, 4)
                    + b"\x38\x12" + _bcd(volt, 2, 2))  # fmt: skip
        return self._single(0x32, self._body(t, sent, elements))

    def added(self, t: datetime, sent: datetime, level: float) -> bytes:
        """An added report (33): the level that crossed a step, between timed reports."""
        self.rows.append((self.vigil_id, "reservoir_level", _ms(t), level))
        return self._single(0x33, self._body(t, sent, b"\x3b\x23" + _bcd(level, 3, 4)))

    def _single(self, function: int, body: bytes) -> bytes:
        head = self._head(function)
        frame = head + len(body).to_bytes(2, "big") + b"\x02" + body + b"\x03"
        return frame + crc16(frame).to_bytes(2, "big")

    def as_packets(self, frame: bytes, total: int) -> list[bytes]:
        """The single frame's message sent as ``total`` M3 packets (SYN, ETB .. ETX)."""
        body = frame[14:-3]
        cut = [round(i * len(body) / total) for i in range(total + 1)]
        out = []
        for seq in range(1, total + 1):
            payload = ((total << 12) | seq).to_bytes(3, "big") + body[cut[seq - 1] : cut[seq]]
            end = b"\x03" if seq == total else b"\x17"
            packet = frame[:11] + len(payload).to_bytes(2, "big") + b"\x16" + payload + end
            out.append(packet + crc16(packet).to_bytes(2, "big"))
        return out


async def _send(port: int, chunks: list[bytes], replies: list[bytes], expect: int) -> None:
    """One connection: each chunk its own write (with a pause, so the server reads
    them apart), then wait for ``expect`` replies."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    splitter = Splitter(Sl651Framing(), 1 << 16)

    async def listen() -> None:
        while len(replies) < expect and (data := await reader.read(65536)):
            replies.extend(raw for kind, raw, _ in splitter.feed(data) if kind == "frame")

    listening = asyncio.ensure_future(listen())
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.002)
    await asyncio.wait_for(listening, 120)
    writer.close()
    await writer.wait_closed()


def _cut(stream: bytes, rng: random.Random) -> list[bytes]:
    """``stream`` cut at random places, 1 to 300 bytes a piece."""
    chunks, i = [], 0
    while i < len(stream):
        n = rng.randint(1, 300)
        chunks.append(stream[i : i + n])
        i += n
    return chunks


def _events(path: Path) -> list[AlertEvent]:
    if not path.exists():
        return []
    return [AlertEvent.from_json(line) for line in path.read_text().splitlines() if line]


def _key(e: AlertEvent) -> tuple[object, ...]:
    return (e.rule_id, e.station, e.metric, e.at, e.started_at, e.previous_level, e.level,
            e.value)  # fmt: skip


def test_backlog_across_reads_alerts_like_replay(tmp_path: Path, mosquitto: Mosquitto) -> None:
    registry = yaml.safe_load((PACKS / "demo_field_stations.yaml").read_text())
    neighbour_station = {**registry["stations"][0], "id": "SK02", "name": "Neighbour reservoir",
            "sl651": {"address": SK02, "password": "1234"}}  # fmt: skip
    registry["stations"].append(neighbour_station)
    stations = tmp_path / "stations.yaml"
    stations.write_text(yaml.safe_dump(registry, allow_unicode=True))
    settings = write_settings(
        tmp_path, mosquitto.port, stations=str(stations), rules=[str(PACKS / "demo_field.yaml")],
        sl651={"port": 0}, partitions=1,  # one partition: SK02 moves SK01's event time on
    )  # fmt: skip
    engine = EngineProcess(settings, tmp_path / "engine.log")
    engine.start()
    rng = random.Random(651)
    try:
        port = engine.listening("sl651")
        sk01 = BacklogRtu("SK01", "0012345678", FloodedReservoirRtu(START))
        sk02 = BacklogRtu("SK02", SK02, FloodedReservoirRtu(START, peak=117.0))
        gap_from, steps = 12, 24 * 12  # SK01 reports an hour, then nothing for 23 hours

        # Before the gap, both report live; then SK02 alone, for the rest of the day.
        def live(rtu: BacklogRtu, n: range) -> list[bytes]:
            return [rtu.timed(START + i * STEP, START + i * STEP) for i in n]

        first = live(sk01, range(gap_from))
        asyncio.run(_send(port, first, [], len(first)))
        neighbour = live(sk02, range(steps + 1))
        asyncio.run(_send(port, neighbour, [], len(neighbour)))

        # Coverage is back: SK01 uploads what it stored, sent now (the end of the day).
        sent = START + steps * STEP
        messages: list[list[bytes]] = []
        reached = 0.0
        for i in range(gap_from, steps + 1):
            t = START + i * STEP
            messages.append([sk01.timed(t, sent)])
            level = sk01.wave.values(t + timedelta(minutes=2))[1]
            if int(level) > reached:  # the level rose past a metre: an added report
                reached = int(level)
                messages.append([sk01.added(t + timedelta(minutes=2), sent, level)])
            if i % 7 == 0:  # a report sent as a multi-packet (M3) message
                messages[-1] = sk01.as_packets(messages[-1][0], rng.randint(2, 4))
        singles = [m[0] for m in messages if len(m) == 1]
        assert (decode_many(singles).status == OK).all()  # the batch decoder's own path
        packets = [p for m in messages if len(m) > 1 for p in m]
        assert len(packets) > 50 and (decode_many(packets).status == FALLBACK).all()
        assert any(sl651.decode(m[0]).function == 0x33 for m in messages)  # type: ignore[union-attr]
        stream = b"".join(p for m in messages for p in m)
        replies: list[bytes] = []
        asyncio.run(_send(port, _cut(stream, rng), replies, len(messages)))

        # Every message answered once, in order, by its serial.
        acks = [sl651.decode(r) for r in replies]
        serials = [a.body.serial for a in acks if isinstance(a, sl651.Frame) and a.body]
        assert len(serials) == len(messages)
        assert serials == list(range(gap_from + 1, gap_from + 1 + len(messages)))

        ruleset, _ = load_rules(load_settings(settings))
        expected = sk01.rows + sk02.rows
        want = sorted(_key(e) for e in replay(ruleset, expected, flush=False))
        assert {k[0] for k in want} == {"demo.reservoir_level"}
        assert {k[1] for k in want} == {"SK01", "SK02"}

        def levels() -> list[tuple[object, ...]]:
            events = _events(tmp_path / "alerts.jsonl")
            return sorted(_key(e) for e in events if e.rule_id == "demo.reservoir_level")

        deadline = time.monotonic() + 120
        while levels() != want and time.monotonic() < deadline:
            time.sleep(0.5)
        assert levels() == want
        silent = [e for e in _events(tmp_path / "alerts.jsonl") if e.rule_id.endswith("#silent")]
        assert [(e.station, e.state) for e in silent] == [
            ("SK01", "firing"), ("SK01", "resolved"),
        ], silent  # fmt: skip
    finally:
        assert engine.terminate() == 0, (tmp_path / "engine.log").read_text()[-3000:]
    rows, dead = _log(tmp_path / "data")
    assert rows == set(expected)
    assert dead == []

"""MqttIngest's handling of a micro-batch, with the broker connection replaced by a
recorder (the real broker is in tests/integration/test_mqtt_*)."""

from __future__ import annotations

import asyncio
from itertools import repeat

import pytest

from connectors.ingest import Inbound, Reading
from connectors.mqtt import client_receive as receive
from connectors.mqtt.client import MqttIngest
from connectors.mqtt.connection import PubAck
from connectors.mqtt.options import MqttOptions
from engine.contracts.batch import ReadingBlock

T0 = 1_719_763_200_000  # readings from before 2000 are dead-lettered (connectors.ingest)


class _Acks:
    def __init__(self) -> None:
        self.acks: list[tuple[int, int]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append((mid, qos))


def _ingest() -> tuple[MqttIngest, list[object], list[tuple[bytes, str, str]], _Acks]:
    produced: list[object] = []
    dead: list[tuple[bytes, str, str]] = []

    async def produce(readings: list[Reading | ReadingBlock]) -> None:
        for r in readings:  # a block as the readings it holds
            produced.extend(
                zip(repeat(r.station), repeat(r.metric), r.ts, r.value, strict=False)
                if isinstance(r, ReadingBlock)
                else [r]
            )

    async def dead_letter(raw: bytes, reason: str, source: str) -> None:
        dead.append((raw, reason, source))

    ingest = MqttIngest(MqttOptions(), produce, dead_letter, known_stations={"HZ001"})
    acks = _Acks()
    ingest._client = acks  # type: ignore[assignment]
    return ingest, produced, dead, acks


def test_qos0_is_taken_but_never_acknowledged() -> None:
    ingest, produced, dead, acks = _ingest()
    batch: list[Inbound | receive._DropCount] = [
        ingest.inbound(0, 0, "vigil/HZ001/water_level", b'{"value": 1, "ts": 1719763200001}', T0),
        ingest.inbound(7, 1, "vigil/HZ001/water_level", b'{"value": 2, "ts": 1719763200002}', T0),
        ingest.inbound(0, 0, "vigil/HZ001/water_level", b"bad", T0),
    ]
    asyncio.run(ingest._handle(batch))
    assert produced == [
        ("HZ001", "water_level", T0 + 1, 1.0),
        ("HZ001", "water_level", T0 + 2, 2.0),
    ]
    assert [reason for _, reason, _ in dead] == [
        "payload is not JSON: Expecting value: line 1 column 1 (char 0)"
    ]
    assert acks.acks == [(7, 1)]
    assert ingest.counters["at_most_once"] == 2 and ingest.counters["received"] == 3


def test_any_exception_on_one_message_dead_letters_it_and_the_rest_flows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = receive.decode_columns

    def flaky(
        payload: bytes, received_ms: int, seqs: list[int] | None = None
    ) -> tuple[list[int], list[float]]:
        if payload == b"boom":
            raise KeyError("a bug decode did not foresee")
        return real(payload, received_ms, seqs)

    monkeypatch.setattr(receive, "decode_columns", flaky)
    ingest, produced, dead, acks = _ingest()
    batch: list[Inbound | receive._DropCount] = [
        ingest.inbound(1, 1, "vigil/HZ001/water_level", b"boom", T0),
        ingest.inbound(2, 1, "vigil/HZ001/water_level", b'{"value": 2, "ts": 1719763200002}', T0),
    ]
    asyncio.run(ingest._handle(batch))
    assert produced == [("HZ001", "water_level", T0 + 2, 2.0)]
    assert dead == [
        (
            b"boom",
            "ingest error: KeyError: 'a bug decode did not foresee'",
            "vigil/HZ001/water_level",
        )
    ]
    assert acks.acks == [(1, 1), (2, 1)]


def _one(ingest: MqttIngest, topic: str, payload: bytes) -> None:
    asyncio.run(ingest._handle([ingest.inbound(3, 1, topic, payload, T0)]))


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (
            "vigil/HZ001/water_level",
            b'{"value": 1, "ts": -5}',
            "ts -5 (1969-12-31T23:59:59+00:00) is before 2000-01-01T00:00:00+00:00: not a "
            "time a reading can have (is the device's clock set?)",
        ),
        (
            "vigil/HZ001/water_level",
            b'{"value": 1, "ts": "9999-01-01T00:00:00Z"}',
            "ts 253370764800000 (9999-01-01T00:00:00+00:00) is more than 86400 s ahead of "
            "the gateway's clock (2024-06-30T16:00:00+00:00; ingest.max_clock_skew_s)",
        ),
        (
            "vigil/HZ001/water_level",
            b'[{"value": 1, "ts": 1719763200000}, {"value": 2, "ts": 1719936000001}]',
            "ts 1719936000001 (2024-07-02T16:00:00+00:00) is more than 86400 s ahead of "
            "the gateway's clock (2024-06-30T16:00:00+00:00; ingest.max_clock_skew_s)",
        ),
        (
            "vigil/HZ001/battery_voltage",
            b'{"value": 3.7, "ts": 1719763200000}',
            "unknown metric 'battery_voltage': station HZ001 reports rainfall, water_level "
            "(its registry entry)",
        ),
        (
            "vigil/HZ001/water_level/extra",
            b'{"value": 1, "ts": 1719763200000}',
            "topic 'vigil/HZ001/water_level/extra' does not match template "
            "'vigil/{station}/{metric}'",
        ),
    ],
)
def test_implausible_readings_are_dead_lettered_with_the_reason(
    topic: str, payload: bytes, reason: str
) -> None:
    ingest, produced, dead, acks = _ingest()
    ingest.known_stations = {"HZ001": frozenset({"water_level", "rainfall"})}
    _one(ingest, topic, payload)
    assert produced == []
    assert dead == [(payload, reason, topic)]
    assert acks.acks == [(3, 1)]


def test_a_reading_within_the_skew_is_taken() -> None:
    ingest, produced, dead, _ = _ingest()
    ingest.known_stations = {"HZ001": frozenset({"water_level"})}
    _one(ingest, "vigil/HZ001/water_level", b'{"value": 1, "ts": 1719849600000}')  # +24 h
    assert produced == [("HZ001", "water_level", 1_719_849_600_000, 1.0)] and dead == []


def test_a_pause_while_catching_up_leaves_the_mark_with_the_backlog_to_the_broker() -> None:
    """Paused (a nearly full disk) while the session's backlog and then its catch-up mark
    wait in the batcher: both are left unacknowledged to the broker, which sends them
    again in that order on resume. Taking the mark alone ended the catch-up before the
    backlog was in, and the backlog was read as live traffic."""
    ingest, produced, no_dead, acks = _ingest()

    async def run() -> list[object]:
        ingest._batcher.bind(asyncio.get_running_loop())
        ingest.catching_up = True
        ingest._marks = {b"mark-1"}
        for k in range(5):
            payload = b'{"value": %d, "ts": %d}' % (k, T0 + k)
            ingest._batcher.put(ingest.inbound(k + 1, 1, "vigil/HZ001/water_level", payload, T0))
        ingest._batcher.put(ingest.inbound(0, 0, "vigil/HZ001/water_level", b'{"value": 9}', T0))
        ingest._batcher.put(receive._Mark(b"mark-1", PubAck(acks, 99)))  # type: ignore[arg-type]

        async def fenced(flushed: asyncio.Future[None]) -> None:
            await flushed

        ingest._fence = fenced  # type: ignore[method-assign]  # no broker here
        leaving = ingest._leave()
        items = await ingest._batcher.next_batch()
        await ingest._handle(items)
        await leaving
        return items

    items = asyncio.run(run())
    assert [type(i).__name__ for i in items] == ["Inbound", "_Flush"]  # the QoS 0 one
    assert [v for *_, v in produced] == [9.0]
    assert acks.acks == [] and ingest.catching_up and not no_dead

"""MqttIngest's handling of a micro-batch, with the broker connection replaced by a
recorder (the real broker is in tests/integration/test_mqtt_*)."""

from __future__ import annotations

import asyncio

import pytest

from connectors.ingest import Inbound
from connectors.mqtt import client as mqtt
from connectors.mqtt.client import MqttIngest
from connectors.mqtt.options import MqttOptions


class _Acks:
    def __init__(self) -> None:
        self.acks: list[tuple[int, int]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append((mid, qos))


def _ingest() -> tuple[MqttIngest, list[object], list[tuple[bytes, str, str]], _Acks]:
    produced: list[object] = []
    dead: list[tuple[bytes, str, str]] = []

    async def produce(readings: list[tuple[str, str, int, float]]) -> None:
        produced.extend(readings)

    async def dead_letter(raw: bytes, reason: str, source: str) -> None:
        dead.append((raw, reason, source))

    ingest = MqttIngest(MqttOptions(), produce, dead_letter, known_stations={"HZ001"})
    acks = _Acks()
    ingest._client = acks  # type: ignore[assignment]
    return ingest, produced, dead, acks


def test_qos0_is_taken_but_never_acknowledged() -> None:
    ingest, produced, dead, acks = _ingest()
    batch: list[Inbound | mqtt._DropCount] = [
        ingest.inbound(0, 0, "vigil/HZ001/water_level", b'{"value": 1, "ts": 1}', 5),
        ingest.inbound(7, 1, "vigil/HZ001/water_level", b'{"value": 2, "ts": 2}', 5),
        ingest.inbound(0, 0, "vigil/HZ001/water_level", b"bad", 5),
    ]
    asyncio.run(ingest._handle(batch))
    assert produced == [("HZ001", "water_level", 1, 1.0), ("HZ001", "water_level", 2, 2.0)]
    assert [reason for _, reason, _ in dead] == [
        "payload is not JSON: Expecting value: line 1 column 1 (char 0)"
    ]
    assert acks.acks == [(7, 1)]
    assert ingest.counters["at_most_once"] == 2 and ingest.counters["received"] == 3


def test_any_exception_on_one_message_dead_letters_it_and_the_rest_flows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = mqtt.decode_payload

    def flaky(payload: bytes, received_ms: int) -> list[tuple[int, float]]:
        if payload == b"boom":
            raise KeyError("a bug decode did not foresee")
        return real(payload, received_ms)

    monkeypatch.setattr(mqtt, "decode_payload", flaky)
    ingest, produced, dead, acks = _ingest()
    batch: list[Inbound | mqtt._DropCount] = [
        ingest.inbound(1, 1, "vigil/HZ001/water_level", b"boom", 5),
        ingest.inbound(2, 1, "vigil/HZ001/water_level", b'{"value": 2, "ts": 2}', 5),
    ]
    asyncio.run(ingest._handle(batch))
    assert produced == [("HZ001", "water_level", 2, 2.0)]
    assert dead == [
        (
            b"boom",
            "ingest error: KeyError: 'a bug decode did not foresee'",
            "vigil/HZ001/water_level",
        )
    ]
    assert acks.acks == [(1, 1), (2, 1)]

"""MQTT payload decoding, per message: the reference decoder (``json`` and per-reading
checks, ``decode_payload``) against what ingest runs (msgspec into typed structs,
column checks, ``decode_columns``), and the whole per-message ingest step
(``MqttIngest._decode``: topic, registry, decode, clock checks), at one and at 100
readings per message. Results and the command: ``bench/MQTT_RESULTS.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from connectors.ingest import Inbound
from connectors.mqtt.client import MqttIngest
from connectors.mqtt.options import MqttOptions
from connectors.mqtt.payload import decode_columns, decode_payload

NOW = 1_719_763_200_000
PAYLOADS = {
    1: b'{"value": 3.21, "ts": 1719763200000}',
    100: b"["
    + b", ".join(b'{"value": %.2f, "ts": %d}' % (1 + k / 100, NOW - 100 + k) for k in range(100))
    + b"]",
}
DECODERS: dict[str, Callable[[bytes, int], Any]] = {
    "json_reference": decode_payload,
    "msgspec_columns": decode_columns,
}


@pytest.mark.parametrize("per_message", [1, 100])
@pytest.mark.parametrize("decoder", list(DECODERS))
def test_decode(benchmark: Any, decoder: str, per_message: int) -> None:
    benchmark.extra_info["readings"] = per_message
    decode = DECODERS[decoder]
    result = benchmark(decode, PAYLOADS[per_message], NOW)
    assert len(result[0] if decoder == "msgspec_columns" else result) == per_message


@pytest.mark.parametrize("per_message", [1, 100])
def test_ingest_decode_step(benchmark: Any, per_message: int) -> None:
    async def nothing(*args: Any) -> None:
        pass

    ingest = MqttIngest(MqttOptions(), nothing, nothing, known_stations={"HZ001"})
    message = Inbound("vigil/HZ001/water_level", PAYLOADS[per_message], NOW, None)
    benchmark.extra_info["readings"] = per_message
    (block,) = benchmark(ingest._decode, message)
    assert len(block) == per_message

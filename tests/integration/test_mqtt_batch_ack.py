"""Through real mosquitto: a batch of QoS 1 messages is acknowledged at once (one PUBACK
packet for paho's thread, one wake-up), and the broker takes every one of them as
acknowledged (nothing is redelivered to the persistent session)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from connectors.ingest import Inbound
from connectors.mqtt.client import MqttIngest
from connectors.mqtt.mosquitto import Mosquitto
from connectors.mqtt.options import MqttOptions

pytestmark = pytest.mark.integration

T0 = 1_719_763_200_000
TOPIC = "vigil/HZ001/water_level"
CLIENT_ID = "batch-ack-gateway"


def _publish(broker: Mosquitto, payloads: list[bytes]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="batch-ack-publisher")
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    infos = [client.publish(TOPIC, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()


async def _ingest(broker: Mosquitto, messages: int) -> tuple[list[int], list[list[Inbound]]]:
    """Runs MqttIngest until ``messages`` readings are produced; returns the sizes of the
    PUBACK packets queued for paho and the batches handled."""
    produced: list[Any] = []
    done = asyncio.Event()

    async def produce(readings: list[Any]) -> None:
        produced.extend(readings)
        if len(produced) >= messages:
            done.set()

    async def dead_letter(raw: bytes, reason: str, source: str) -> None:
        raise AssertionError(f"dead letter: {reason}")

    options = MqttOptions(
        host=broker.host,
        port=broker.port,
        client_id=CLIENT_ID,
        max_readings=10_000,
        linger_ms=200,
        broker_drops_topic=None,
    )
    ingest = MqttIngest(options, produce, dead_letter)
    pubacks: list[int] = []
    queue = ingest._client._packet_queue

    def counting_queue(command: int, packet: bytes, *args: Any) -> Any:
        if command & 0xF0 == mqtt.PUBACK:
            pubacks.append(len(packet))
        return queue(command, packet, *args)

    ingest._client._packet_queue = counting_queue  # type: ignore[method-assign]
    batches: list[list[Inbound]] = []
    handle = ingest._handle

    async def recording_handle(items: list[Any]) -> None:
        batches.append(items)
        await handle(items)

    ingest._handle = recording_handle  # type: ignore[method-assign]
    await ingest.start()
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, ingest.subscribed.wait, 30)
    payloads = [b'{"value": %d, "ts": %d}' % (k, T0 + k) for k in range(messages)]
    await loop.run_in_executor(None, _publish, broker, payloads)
    await asyncio.wait_for(done.wait(), 60)
    await ingest.stop()  # disconnects after the last batch's acks went out
    return pubacks, batches


def _redelivered(broker: Mosquitto) -> list[bytes]:
    """What the broker still holds for the gateway's persistent session: the messages
    delivered on reconnect before a marker published after it."""
    got: list[bytes] = []
    end = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=CLIENT_ID, clean_session=False)

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload == b"marker":
            end.set()
        else:
            got.append(msg.payload)

    client.on_message = on_message
    client.on_connect = lambda c, *a: c.publish(TOPIC, b"marker", qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert end.wait(30), "the marker never came back"
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def test_a_batch_is_acknowledged_at_once_and_the_broker_redelivers_nothing() -> None:
    messages = 500
    with Mosquitto() as broker:
        pubacks, batches = asyncio.run(_ingest(broker, messages))
        assert sum(len(b) for b in batches) == messages
        # Every message acknowledged, 4 bytes a PUBACK, one packet per batch.
        assert sum(pubacks) == 4 * messages
        assert len(pubacks) == len(batches) < messages
        assert _redelivered(broker) == []

"""Through real mosquitto: a batch of QoS 1 messages is acknowledged at once (one PUBACK
packet for paho's thread, one wake-up), and the broker takes every one of them as
acknowledged (nothing is redelivered to the persistent session). A pause (the disk is
full) and a stop (SIGTERM, of ``MqttIngest`` and of a whole ``vigil run``) acknowledge
what ingest took before they leave the broker: nothing is delivered twice across
them."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from connectors.ingest import Inbound
from connectors.mqtt.client import MqttIngest
from connectors.mqtt.mosquitto import Mosquitto
from connectors.mqtt.options import MqttOptions
from engine.contracts.batch import ReadingBlock
from tests.integration.test_mqtt_ingest_faults import (
    _alerts,
    _Publisher,
    _reading,
    _sentinel_engine,
    _telemetry,
    _topic,
)
from tests.integration.test_storage import _wait_disconnected_sessions

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
        messages = [m for m in items if isinstance(m, Inbound)]
        if messages:  # not the stop's flush marker alone
            batches.append(messages)
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
    delivered on reconnect before a marker published after it.

    Only once the broker has read the gateway's connection to its end (its DISCONNECT:
    the session counts as disconnected; ``broker`` needs ``sys_interval 1``). A client
    that connects with the same id before then takes the session over, and mosquitto
    closes the old connection with what it had not read of it, PUBACKs included: their
    messages are delivered again, which is legal at QoS 1 (MQTT 3.1.1, 3.1.4: the
    server disconnects the existing client; 4.3.2: unacknowledged until the PUBACK is
    received). mosquitto reads one packet per turn of its loop, so a batch's PUBACKs
    take hundreds of turns."""
    _wait_disconnected_sessions(broker, 1)
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
    with Mosquitto(override={"sys_interval": "1"}) as broker:
        pubacks, batches = asyncio.run(_ingest(broker, messages))
        assert sum(len(b) for b in batches) == messages
        # Every message acknowledged, 4 bytes a PUBACK, one packet per batch.
        assert sum(pubacks) == 4 * messages
        assert len(pubacks) == len(batches) < messages
        assert _redelivered(broker) == []


class _Flood:
    """Publishes numbered readings (value k) at QoS 1 from a thread until stopped."""

    def __init__(self, broker: Mosquitto) -> None:
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="batch-ack-flood")
        self._client.max_queued_messages_set(0)
        self._client.connect(broker.host, broker.port)
        self._stop = threading.Event()
        self._sent = 0  # taken by the broker (its PUBACK came)
        self._progress = threading.Condition()
        self._thread = threading.Thread(target=self._run)

    def start(self) -> None:
        self._client.loop_start()
        self._thread.start()

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            infos = [
                self._client.publish(TOPIC, b'{"value": %d, "ts": %d}' % (k + j, T0 + k + j), 1)
                for j in range(200)
            ]
            for info in infos:
                info.wait_for_publish(30)
            k += len(infos)
            with self._progress:
                self._sent = k
                self._progress.notify_all()

    def wait_sent(self, n: int) -> bool:
        with self._progress:
            return self._progress.wait_for(lambda: self._sent >= n, 60)

    def stop(self) -> int:
        """Stops; returns how many readings the broker took."""
        self._stop.set()
        self._thread.join()
        self._client.disconnect()
        self._client.loop_stop()
        return self._sent


async def _subscribed(
    broker: Mosquitto, produce: Callable[[list[Any]], Awaitable[None]], max_readings: int = 5000
) -> MqttIngest:
    """``MqttIngest`` of the gateway's client id, started and subscribed, that takes no
    message to be a dead letter."""

    async def dead_letter(raw: bytes, reason: str, source: str) -> None:
        raise AssertionError(f"dead letter: {reason}")

    options = MqttOptions(
        host=broker.host,
        port=broker.port,
        client_id=CLIENT_ID,
        broker_drops_topic=None,
        max_readings=max_readings,
    )
    ingest = MqttIngest(options, produce, dead_letter)
    await ingest.start()
    assert await asyncio.get_running_loop().run_in_executor(None, ingest.subscribed.wait, 30)
    return ingest


async def _flood_and_leave(
    broker: Mosquitto, in_hand: asyncio.Event, leave: Callable[[], Awaitable[None]]
) -> int:
    """Floods the broker; once ingest has a batch in hand and the broker has taken 5000
    more readings, ``leave`` (ingest pauses or stops with the flood still going). Returns
    how many readings the flood published, all told."""
    loop = asyncio.get_running_loop()
    flood = _Flood(broker)
    flood.start()
    try:
        await asyncio.wait_for(in_hand.wait(), 60)
        assert await loop.run_in_executor(None, flood.wait_sent, 5000)
        await leave()
    finally:
        published = await loop.run_in_executor(None, flood.stop)
    return published


def _count(produced: Counter[int], readings: list[Any]) -> None:
    """Each reading's value (its number) counted once more in ``produced``."""
    for block in readings:
        assert isinstance(block, ReadingBlock)
        produced.update(int(v) for v in block.value)


async def _until_produced(produced: Counter[int], published: int) -> None:
    async with asyncio.timeout(60):
        while len(produced) < published:
            await asyncio.sleep(0.01)


async def _pause_with_a_batch_in_hand(broker: Mosquitto) -> tuple[int, Counter[int]]:
    """Ingest pauses while its first batch is being written, with thousands of messages
    taken after it and the broker still sending; resumed once the publisher stopped.
    Returns how many readings were published and how often each (its value) was
    produced."""
    produced: Counter[int] = Counter()
    in_hand, written = asyncio.Event(), asyncio.Event()

    async def produce(readings: list[Any]) -> None:
        if not in_hand.is_set():
            in_hand.set()
            await written.wait()  # the fsync of the batch in hand, while the guard pauses
        _count(produced, readings)

    ingest = await _subscribed(broker, produce)

    async def pause() -> None:
        ingest.pause("the disk is full")
        written.set()
        async with asyncio.timeout(60):
            while ingest.state != "disconnected":
                await asyncio.sleep(0.01)

    published = await _flood_and_leave(broker, in_hand, pause)
    ingest.resume()
    await _until_produced(produced, published)
    await ingest.stop()
    return published, produced


def test_a_pause_acknowledges_what_it_took_before_it_leaves_the_broker() -> None:
    """Every reading is produced once across the pause: what was taken is written and
    acknowledged, and the broker has read those PUBACKs before the disconnect; what
    arrives after the pause began is left to the broker, which sends it after resume.
    A PUBACK lost in the pause would make the broker send its message again after
    resume (first in the stream, before the readings it kept meanwhile): a second
    copy in the log."""
    with Mosquitto() as broker:
        published, produced = asyncio.run(_pause_with_a_batch_in_hand(broker))
    twice = sorted(k for k, n in produced.items() if n > 1)
    assert not twice, f"{len(twice)} readings were produced twice across the pause: {twice[:9]}..."
    assert sorted(produced) == list(range(published))


async def _stop_with_a_batch_in_hand(broker: Mosquitto) -> tuple[int, Counter[int]]:
    """Ingest stops while a batch is written and not yet durable (its fsync under way),
    with the broker still sending; a second ingest with the same client id then takes
    what the broker kept. Returns how many readings were published and how often each
    (its value) was written."""
    produced: Counter[int] = Counter()
    in_hand, durable = asyncio.Event(), asyncio.Event()

    async def produce(readings: list[Any]) -> None:
        _count(produced, readings)  # written: the log holds it ...
        if not in_hand.is_set():
            in_hand.set()
            await durable.wait()  # ... and its fsync is under way as the stop comes

    ingest = await _subscribed(broker, produce)

    async def stop() -> None:
        stopping = asyncio.ensure_future(ingest.stop())
        await asyncio.sleep(0)  # the stop has begun (SIGTERM) before the fsync ends
        durable.set()
        await asyncio.wait_for(stopping, 60)

    published = await _flood_and_leave(broker, in_hand, stop)
    again = await _subscribed(broker, produce)
    await _until_produced(produced, published)
    await again.stop()
    return published, produced


def test_a_stop_acknowledges_what_it_took_before_it_leaves_the_broker() -> None:
    """``stop`` (SIGTERM) leaves the broker as a pause does: the batch in hand is
    written and acknowledged, and the broker has read those PUBACKs before the
    disconnect; the rest is left to the broker. Every reading is written once across the
    stop. A disconnect with the batch in hand would have the broker send it again (a
    second copy in the log, and its readings late for the rules)."""
    with Mosquitto() as broker:
        published, produced = asyncio.run(_stop_with_a_batch_in_hand(broker))
    twice = sorted(k for k, n in produced.items() if n > 1)
    assert not twice, f"{len(twice)} readings were written twice across the stop: {twice[:9]}..."
    assert sorted(produced) == list(range(published))


async def _stop_with_batches_waiting(broker: Mosquitto) -> tuple[int, Counter[int], int]:
    """Ingest, in batches of 100, stops while its first batch is written and not yet
    durable, with thousands of messages received after it waiting for a batch; a
    second ingest with the same client id then takes what the broker kept. Returns how
    many readings were published, how often each was written, and how many batches
    the first ingest began to write after its stop began."""
    produced: Counter[int] = Counter()
    in_hand, durable = asyncio.Event(), asyncio.Event()
    after_stop = [0]
    ingest: MqttIngest | None = None

    async def produce(readings: list[Any]) -> None:
        if ingest is not None and ingest._leaving is not None:  # the stop has begun
            after_stop[0] += 1
        _count(produced, readings)
        if not in_hand.is_set():
            in_hand.set()
            await durable.wait()

    ingest = first = await _subscribed(broker, produce, max_readings=100)

    async def stop() -> None:
        async with asyncio.timeout(60):  # 30 batches and more wait behind the one in hand
            while len(first._batcher._items) < 3000:
                await asyncio.sleep(0.01)
        stopping = asyncio.ensure_future(first.stop())
        await asyncio.sleep(0)  # the stop has begun (SIGTERM) before the fsync ends
        durable.set()
        await asyncio.wait_for(stopping, 60)

    published = await _flood_and_leave(broker, in_hand, stop)
    ingest = None
    again = await _subscribed(broker, produce)
    await _until_produced(produced, published)
    await again.stop()
    return published, produced, after_stop[0]


def test_a_stop_writes_the_batch_in_hand_and_leaves_the_batches_waiting_to_the_broker() -> None:
    """What a stop writes is the batch in hand only: the messages received after it and
    not yet in a batch (the broker keeps up to ``max_inflight_messages``, 20000, in the
    socket) are left unacknowledged to the broker, which sends them again. Writing them
    all first made a stop on a slow disk overrun ``STOP_TIMEOUT_S`` (tens of batches of
    fsyncs) and disconnect with the batch in hand unacknowledged: written twice after
    the restart. Every reading is written once across the stop."""
    with Mosquitto() as broker:
        published, produced, after_stop = asyncio.run(_stop_with_batches_waiting(broker))
    assert after_stop == 0, f"{after_stop} batches were written after the stop began"
    twice = sorted(k for k, n in produced.items() if n > 1)
    assert not twice, f"{len(twice)} readings were written twice across the stop: {twice[:9]}..."
    assert sorted(produced) == list(range(published))


def test_sigterm_of_a_gateway_under_a_qos1_publisher_writes_no_reading_twice(
    tmp_path: Path,
) -> None:
    """``vigil run`` stopped with SIGTERM three times while a publisher sends QoS 1
    readings of one gauge, and started again: the telemetry log holds every published
    reading exactly once, and no dead letter (a redelivered reading, older than those
    the gauge sent since, would be late or out of order for the rule). On a slow disk
    (``apps/slow_disk_gateway.py``), so that each SIGTERM finds a batch written and
    not yet acknowledged: a fast one leaves that to chance."""
    script = Path(__file__).parent / "apps" / "slow_disk_gateway.py"
    with Mosquitto() as broker:
        engine = _sentinel_engine(tmp_path, broker, [sys.executable, str(script)])
        engine.start()
        flood = _Flood(broker)
        flood.start()
        try:
            for stop in range(1, 4):
                assert flood.wait_sent(stop * 3000)
                assert engine.terminate() == 0, engine.log.read_text()[-3000:]
                engine.start()
        finally:
            published = flood.stop()
        try:
            # After every flood message in the gateway's session: once its alert is out,
            # everything before it is in the log.
            marker = _Publisher(broker, client_id="batch-ack-marker")
            marker.publish([_reading("HZ002", 0, 150.0)])
            marker.close()
            deadline = time.monotonic() + 120
            while not [e for e in _alerts(tmp_path / "alerts.jsonl") if e.station == "HZ002"]:
                assert time.monotonic() < deadline, engine.log.read_text()[-3000:]
                time.sleep(0.2)
            assert engine.terminate() == 0, engine.log.read_text()[-3000:]
        finally:
            engine.kill()
    written = Counter(
        int(v) for station, _, v in _telemetry(tmp_path / "data") if station == "HZ001"
    )
    twice = sorted(k for k, n in written.items() if n > 1)
    assert not twice, f"{len(twice)} readings are in the log twice: {twice[:9]}..."
    assert sorted(written) == list(range(published))
    dead = [headers["vigil-reason"] for _, headers in _topic(tmp_path / "data", "dead-letter")]
    assert not dead, f"{len(dead)} dead letters: {dead[:3]}"

"""Through real mosquitto: MQTT ingest in two worker processes sharing the subscription
(``connectors.mqtt.pool``) hands this process every published reading exactly once, both
workers take part, and a worker killed while its batch is being written is started
again and gets what it had not acknowledged redelivered; so is a worker that hangs
(SIGSTOP), once found silent. A stop with a batch in hand acknowledges it before the
workers leave the broker: nothing comes twice after it."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from connectors.mqtt.mosquitto import Mosquitto
from connectors.mqtt.options import MqttOptions
from connectors.mqtt.pool import MqttIngestPool
from connectors.mqtt.pool_worker import WorkerView
from engine.contracts.batch import ReadingBlock
from engine.runtime.services.observe_metrics import MqttState

pytestmark = pytest.mark.integration

T0 = 1_719_763_200_000
STATIONS = 40
PER_STATION = 75  # 3000 messages


def _messages() -> list[tuple[str, bytes]]:
    """One reading a message, stations interleaved as devices send them over time."""
    return [
        (f"vigil/ST{s:03d}/water_level", b'{"value": %d.5, "ts": %d}' % (k, T0 + k * 60_000))
        for k in range(PER_STATION)
        for s in range(STATIONS)
    ]


def _published() -> list[tuple[str, int, float]]:
    return [
        (f"ST{s:03d}", T0 + k * 60_000, k + 0.5)
        for k in range(PER_STATION)
        for s in range(STATIONS)
    ]


def _publish(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="processes-publisher")
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


class _Recorder:
    """``produce`` of the gateway process: every reading it was handed, in order."""

    def __init__(self, expected: int) -> None:
        self.readings: list[tuple[str, int, float]] = []
        self.expected = expected
        self.all_in = asyncio.Event()

    async def produce(self, readings: list[Any]) -> None:
        for block in readings:
            assert isinstance(block, ReadingBlock)
            self.readings.extend(
                (block.station, t, v) for t, v in zip(block.ts, block.value, strict=True)
            )
        if len(set(self.readings)) >= self.expected:
            self.all_in.set()

    async def dead_letter(self, raw: bytes, reason: str, source: str) -> None:
        raise AssertionError(f"dead letter from {source}: {reason}")


def _options(broker: Mosquitto, client_id: str, mqtt5: bool = False) -> MqttOptions:
    return MqttOptions(
        mqtt5=mqtt5,
        host=broker.host,
        port=broker.port,
        client_id=client_id,
        max_readings=200,
        linger_ms=20,
        broker_drops_topic=None,
        processes=2,
    )


async def _until_subscribed(pool: MqttIngestPool) -> None:
    for _ in range(600):
        if pool.subscribed.is_set():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"workers not subscribed: {pool.state} {pool.connection}")


async def _until_all_in(
    pool: MqttIngestPool, recorder: _Recorder, publish: asyncio.Future[None]
) -> None:
    """Waits until ``recorder`` has every reading, failing should the pool end first,
    then for the ``publish`` under way to end."""
    waiting = asyncio.ensure_future(recorder.all_in.wait())
    joined = asyncio.ensure_future(pool.join())
    done, _ = await asyncio.wait({waiting, joined}, timeout=120, return_when="FIRST_COMPLETED")
    assert waiting in done, f"ingest ended or timed out: {done}"
    await publish


async def _run(pool: MqttIngestPool, recorder: _Recorder, broker: Mosquitto) -> None:
    await pool.start()
    try:
        await _until_subscribed(pool)
        publish = asyncio.get_running_loop().run_in_executor(None, _publish, broker, _messages())
        await _until_all_in(pool, recorder, publish)
    finally:
        await pool.stop()


@pytest.mark.parametrize("mqtt5", [False, True], ids=["mqtt3.1.1", "mqtt5"])
def test_two_processes_share_the_subscription_and_deliver_every_reading_once(
    mqtt5: bool,
) -> None:
    with Mosquitto() as broker:
        recorder = _Recorder(STATIONS * PER_STATION)
        options = _options(broker, "processes-once", mqtt5)
        pool = MqttIngestPool(options, recorder.produce, recorder.dead_letter)
        asyncio.run(_run(pool, recorder, broker))
    assert sorted(recorder.readings) == sorted(_published())  # each once, none missing
    per_worker = [w.counters.get("received", 0) for w in pool._workers]
    assert all(n > 0 for n in per_worker), per_worker  # both took part
    assert pool.counters["received"] == STATIONS * PER_STATION
    assert pool.counters["worker_restarts"] == 0


class _SignallingPool(MqttIngestPool):
    """Sends ``sig`` to the worker whose batch it is handed after ``after`` readings,
    before that batch is written (``held``: its readings), and never answers it.
    SIGKILL: the worker never hears ``done`` and never acknowledges the batch; SIGSTOP:
    it hangs with its messages unacknowledged and reports nothing more, as a deadlocked
    worker would. Only its restart, and the broker's redelivery, can bring them in."""

    def __init__(self, *args: Any, after: int, recorder: _Recorder, sig: int) -> None:
        super().__init__(*args)
        self.after = after
        self.recorder = recorder
        self.sig = sig
        self.held: list[tuple[str, int, float]] = []

    async def _handle(self, w: WorkerView, frame: tuple[Any, ...]) -> None:
        if frame[0] == "produce" and not self.held and len(self.recorder.readings) >= self.after:
            assert w.process is not None
            os.kill(w.process.pid, self.sig)
            self.held = [  # before any wait: the other worker's batch goes on
                (station, t, v)
                for station, _, ts, values in frame[1]
                for t, v in zip(ts, values, strict=True)
            ]
            if self.sig == signal.SIGKILL:
                await w.process.wait()
            return  # not written, no answer
        await super()._handle(w, frame)


def _signalling(broker: Mosquitto, client_id: str, sig: int) -> tuple[_SignallingPool, _Recorder]:
    """A pool that sends ``sig`` to a worker a third of the way through the readings,
    and the recorder of what it hands on."""
    recorder = _Recorder(STATIONS * PER_STATION)
    pool = _SignallingPool(
        _options(broker, client_id),
        recorder.produce,
        recorder.dead_letter,
        after=STATIONS * PER_STATION // 3,
        recorder=recorder,
        sig=sig,
    )
    return pool, recorder


def test_a_killed_worker_is_started_again_and_gets_its_unacknowledged_messages() -> None:
    with Mosquitto() as broker:
        pool, recorder = _signalling(broker, "processes-kill", signal.SIGKILL)
        asyncio.run(_run(pool, recorder, broker))
    assert pool.held, "no worker was killed"
    assert pool.counters["worker_restarts"] == 1
    # Every reading is in, those of the batch that was never written included; the
    # worker's messages received before its death may come twice (never acknowledged).
    assert set(recorder.readings) == set(_published())
    assert set(pool.held) <= set(recorder.readings)


class _Unwritable(_Recorder):
    async def produce(self, readings: list[Any]) -> None:
        raise OSError(28, "No space left on device")


async def _until_failed(pool: MqttIngestPool, broker: Mosquitto | None) -> BaseException:
    await pool.start()
    try:
        if broker is not None:
            await _until_subscribed(pool)
            await asyncio.get_running_loop().run_in_executor(None, _publish, broker, _messages())
        with pytest.raises(Exception) as failed:
            await asyncio.wait_for(pool.join(), 120)
        return failed.value
    finally:
        await pool.stop()


def test_a_failed_append_ends_the_ingest_and_nothing_of_it_is_acknowledged() -> None:
    with Mosquitto() as broker:
        unwritable = _Unwritable(STATIONS * PER_STATION)
        options = _options(broker, "processes-unwritable")
        pool = MqttIngestPool(options, unwritable.produce, unwritable.dead_letter)
        failed = asyncio.run(_until_failed(pool, broker))
        assert isinstance(failed, OSError)
        # The same workers' sessions, now writable: the broker delivers everything again.
        recorder = _Recorder(STATIONS * PER_STATION)
        again = MqttIngestPool(options, recorder.produce, recorder.dead_letter)

        async def drain() -> None:
            await again.start()
            try:
                await asyncio.wait_for(recorder.all_in.wait(), 120)
            finally:
                await again.stop()

        asyncio.run(drain())
    assert set(recorder.readings) == set(_published())


def test_a_worker_that_cannot_start_ends_the_ingest() -> None:
    options = MqttOptions(port=1, ca_file="/nonexistent/ca.pem", processes=2)
    pool = MqttIngestPool(options, _Recorder(0).produce, _Recorder(0).dead_letter)
    failed = asyncio.run(_until_failed(pool, None))
    assert "exited (1) at start" in str(failed)


async def _run_freezing(pool: _SignallingPool, recorder: _Recorder, broker: Mosquitto) -> None:
    await pool.start()
    try:
        await _until_subscribed(pool)
        publish = asyncio.get_running_loop().run_in_executor(None, _publish, broker, _messages())
        async with asyncio.timeout(120):
            while not pool.held:
                await asyncio.sleep(0.01)
            # Found hung: the pool no longer says it is subscribed (``/readyz``).
            while pool.state == "subscribed":
                await asyncio.sleep(0.01)
        await _until_all_in(pool, recorder, publish)
    finally:
        await pool.stop()


def test_a_hung_worker_is_found_killed_and_restarted_and_nothing_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Mosquitto() as broker, caplog.at_level(logging.INFO, logger="connectors.mqtt.pool"):
        pool, recorder = _signalling(broker, "processes-hang", signal.SIGSTOP)
        asyncio.run(_run_freezing(pool, recorder, broker))
    assert pool.held, "no worker was frozen"
    assert re.search(r"MQTT ingest worker \d \(pid \d+\) is hung \(silent for 2.5 s\)", caplog.text)
    assert "exited with status -9: starting it again" in caplog.text
    assert pool.counters["worker_hangs"] == 1
    assert pool.counters["worker_restarts"] == 1
    metrics = {m.name: m.samples[0].value for m in MqttState(pool).collect()}
    assert metrics["vigil_mqtt_worker_hangs"] == metrics["vigil_mqtt_worker_restarts"] == 1
    # Every reading is in, the frozen batch's too (redelivered to the new worker); what
    # the frozen worker had taken and not acknowledged may come twice (the pool's
    # promise for a worker that is killed: at least once; the kernels count it once).
    assert set(recorder.readings) == set(_published())
    assert set(pool.held) <= set(recorder.readings)


class _Holding(_Recorder):
    """Writes each batch (records it) at once; the first batch written after ``hold_after``
    readings then waits for ``release`` before it is answered, as a batch whose fsync
    is under way while the pool stops."""

    def __init__(self, expected: int, hold_after: int) -> None:
        super().__init__(expected)
        self.hold_after = hold_after
        self.in_hand = asyncio.Event()
        self.release = asyncio.Event()

    async def produce(self, readings: list[Any]) -> None:
        await super().produce(readings)
        if not self.in_hand.is_set() and len(self.readings) >= self.hold_after:
            self.in_hand.set()
            await self.release.wait()


async def _stop_with_a_batch_in_hand(
    options: MqttOptions, recorder: _Holding, broker: Mosquitto
) -> None:
    """Stops the pool while a worker's batch is being written and the publisher is still
    sending; then a pool with the same client ids takes what the broker kept."""
    pool = MqttIngestPool(options, recorder.produce, recorder.dead_letter)
    await pool.start()
    try:
        await _until_subscribed(pool)
        publish = asyncio.get_running_loop().run_in_executor(None, _publish, broker, _messages())
        await asyncio.wait_for(recorder.in_hand.wait(), 120)
        stopping = asyncio.ensure_future(pool.stop())
        await asyncio.sleep(0)  # the stop's first step: every worker is sent ("stop",)
        recorder.release.set()  # the batch in hand is answered after that
        await stopping
        await publish
    finally:
        await pool.stop()
    again = MqttIngestPool(options, recorder.produce, recorder.dead_letter)
    await again.start()
    try:
        # The broker sends a session's unacknowledged messages first, on reconnect
        # (before the SUBACK): once subscribed, what came twice is taken, and the stop
        # writes what was taken.
        await _until_subscribed(again)
        await asyncio.wait_for(recorder.all_in.wait(), 120)
    finally:
        await again.stop()


def test_a_stop_acknowledges_the_batch_in_hand_before_it_leaves_the_broker() -> None:
    """The pool stops with a batch being written: the worker writes, acknowledges and
    fences it before it disconnects, so the broker sends none of it again; the readings
    it had not taken, the broker delivers to the next pool. Every reading once."""
    with Mosquitto() as broker:
        recorder = _Holding(STATIONS * PER_STATION, hold_after=STATIONS * PER_STATION // 3)
        options = _options(broker, "processes-stop")
        asyncio.run(_stop_with_a_batch_in_hand(options, recorder, broker))
    twice = [r for r, n in Counter(recorder.readings).items() if n > 1]
    assert not twice, f"{len(twice)} readings written twice across the stop: {twice[:5]}"
    assert sorted(recorder.readings) == sorted(_published())

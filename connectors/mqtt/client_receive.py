"""What one MQTT ingest client (``connectors.mqtt.client``) does with what it receives:
each message put in the batcher (``_on_message``, on paho's thread), each batch decoded,
written and then acknowledged (``_handle``), and the catch-up marks, flushes and drop
counts that come through the batcher with them.

Contracts: a QoS 1 message is acknowledged only after its readings, or its dead letter,
are durable (``connectors.ingest.deliver``); any exception on one message dead-letters
it with the reason and its raw bytes, and the stream goes on; while leaving
(``_taking`` false: ``MqttIngest.pause``, ``stop``) a QoS 1 message is left to the
broker. ``Receiving`` is a base of ``MqttIngest``: it reads that client's options,
callbacks and state (declared below), which ``MqttIngest.__init__`` sets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from connectors.ingest import (
    Admission,
    DeadLetter,
    Inbound,
    MicroBatcher,
    Produce,
    Stations,
    deliver,
)
from connectors.mqtt.client_catchup import CatchUp
from connectors.mqtt.connection import PubAck, ack_together, set_done
from connectors.mqtt.payload import decode_columns
from connectors.mqtt.topics import TopicTemplate
from engine.contracts.batch import ReadingBlock

__all__ = ["BrokerDrops", "Receiving", "Sequences"]

# The client's logger: what is said here reads as the client's, as before the split.
log = logging.getLogger("connectors.mqtt.client")

#: ``on_broker_drops(total)``: the broker's cumulative count of dropped messages.
BrokerDrops = Callable[[int], Awaitable[None]]
#: ``on_sequence(topic, seqs, received_ms)``: the ``seq`` numbers of a message that
#: became readings, in payload order (synchronous, on the event loop).
Sequences = Callable[[str, list[int], int], None]


@dataclass
class _DropCount:
    total: int


@dataclass
class _Mark:
    """A catch-up mark (``MqttOptions.catch_up_topic``) as it came back: one of this
    process's, or one a process before it published and never read."""

    payload: bytes
    ack: PubAck


@dataclass
class _Flush:
    """Put in the batcher by ``_leave``: done once every message taken before it and
    still in the batcher (``_leave`` leaves QoS 1 messages and marks waiting there to
    the broker) is written and its PUBACK queued (the batcher hands items over in the
    order put)."""

    done: asyncio.Future[None]


class Receiving(CatchUp):
    """The receiving and batching of ``MqttIngest`` (a base of it; see the module)."""

    # ``MqttIngest``'s, set by its ``__init__`` and read here.
    template: TopicTemplate
    admission: Admission
    known_stations: Stations | None
    counters: Counter[str]
    on_caught_up: Callable[[], None] | None
    _batcher: MicroBatcher[Inbound | _DropCount | _Flush | _Mark]
    _produce: Produce
    _dead_letter: DeadLetter
    _on_sequence: Sequences | None
    _on_broker_drops: BrokerDrops | None
    _retiring: asyncio.Task[None] | None

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # brokers check topics are UTF-8; keep the bytes anyway
            topic = msg._topic.decode("utf-8", "backslashreplace")
        if topic == self.options.catch_up_topic:
            mark = _Mark(bytes(msg.payload), PubAck(client, msg.mid))
            with self._gate:
                if self._taking:  # else the next connection reads it (as not ours)
                    self._batcher.put(mark)
            return
        inbound = self.inbound(msg.mid, msg.qos, topic, bytes(msg.payload))
        with self._gate:
            # Leaving (pause, stop), a QoS 1 message is left to the broker: taken now,
            # its PUBACK would come after the disconnect and never reach the broker,
            # which would then deliver it again, a second copy in the log. QoS 0 is
            # taken: it is never redelivered.
            if self._taking or inbound.ack is None:
                self._batcher.put(inbound)

    def inbound(
        self, mid: int, qos: int, topic: str, payload: bytes, received_ms: int | None = None
    ) -> Inbound:
        """A received message; QoS 0 has no packet id and is never acknowledged (a
        PUBACK for it is a protocol error that makes the broker drop the connection)."""
        if received_ms is None:
            received_ms = int(time.time() * 1000)
        return Inbound(topic, payload, received_ms, None if qos == 0 else PubAck(self._client, mid))

    def _ack_batch(self, messages: list[Inbound]) -> None:
        ack_together(self._client, [m.ack for m in messages if isinstance(m.ack, PubAck)])

    # ---- batching ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._handle(await self._batcher.next_batch())

    def _decode(self, m: Inbound) -> list[ReadingBlock]:
        """A message's readings as one block: no Python tuple per reading."""
        station, metric = self.template.parse(m.source)
        self.admission.check_sensor(station, metric, self.known_stations)
        seqs: list[int] = []
        ts, values = decode_columns(m.payload, m.received_ms, seqs)
        self.admission.check_times(ts, m.received_ms)
        if seqs and self._on_sequence is not None:
            self._on_sequence(m.source, seqs, m.received_ms)
        return [ReadingBlock(station, metric, ts, values)]

    async def _handle(self, items: list[Inbound | _DropCount | _Flush | _Mark]) -> None:
        messages = [m for m in items if isinstance(m, Inbound)]
        marks = [m for m in items if isinstance(m, _Mark)]
        # ``catching_up`` stays true for the batch that holds the mark: the messages
        # before it in the batch are the session's backlog.
        await deliver(
            messages,
            self._decode,
            self._produce,
            self._dead_letter,
            self.counters,
            self.options.max_payload_bytes,
            self._ack_batch,
        )
        ack_together(self._client, [m.ack for m in marks])
        if self.catching_up and any(m.payload in self._marks for m in marks):
            self.catching_up = False
            log.info("MQTT ingest %s caught up with its session", self.options.client_id)
            if self.on_caught_up is not None:
                self.on_caught_up()
            if self.options.retire:
                self._retiring = asyncio.ensure_future(self._retire())
        elif self._second_mark is not None and any(m.payload in self._second_marks for m in marks):
            set_done(self._second_mark)
        for flush in items:
            if isinstance(flush, _Flush):
                set_done(flush.done)
        drops = [d.total for d in items if isinstance(d, _DropCount)]
        if drops and self._on_broker_drops is not None:
            await self._on_broker_drops(drops[-1])

"""MQTT ingest: a paho-mqtt 2.x subscriber at QoS 1 that produces telemetry batches.

The rules every ingest connector keeps (micro-batches, acknowledge only after a durable
append, dead letters, at-most-once counting) are ``connectors.ingest``'s; this module
holds what is MQTT's.

Contract with the broker: a QoS 1 message is acknowledged (PUBACK) only after its
readings, or its dead-letter record, are durably in the log (``manual_ack``), and the
session is persistent (``clean_session=False``, fixed client id). A crash before the ack
means the broker redelivers; the kernels recognise a reading they have already counted
and skip it (README, "What the engine evaluates": what each rule kind
remembers per sensor), so redelivery never double-counts. A stop (SIGTERM) or a pause
leaves no such copy: the batch in hand is written and acknowledged, and the broker has
read its PUBACKs, before the disconnect (``pause``, ``stop``); the QoS 1 messages
received and not yet in a batch are never acknowledged: the broker sends them again. A
QoS 0
message has no packet id and is never acknowledged (a PUBACK for it is a protocol error
that makes the broker drop the connection); it is taken like any other, but the device
chose at most once: what a crash loses of it, no one redelivers.

Every message becomes readings or a dead letter: whatever goes wrong with one message
(``decode_payload``'s reasons, or any other exception) dead-letters it with the reason and
its raw bytes, and the stream goes on. ``join`` raises if the ingest task itself fails
(the log cannot be written): its owner must then end the process, never run on without
ingest.

When the broker publishes its dropped-message count (mosquitto's ``$SYS`` tree,
``MqttOptions.broker_drops_topic``), a second client follows it
(``connectors.mqtt.broker_drops``) and each count goes to ``on_broker_drops``.

Connection: a broker that refuses or cannot be reached is logged at once with the reason
(connection refused, a DNS failure, a TLS certificate that does not verify, the broker's
CONNACK code) and retried by paho with backoff (1 s doubling to 10 s); ``connection``
holds the state and the last reason for health checks and ``vigil status``.

Shared subscription (``MqttOptions.share_group``, set on the worker processes of
``connectors.mqtt.pool``): the client subscribes to ``$share/<group>/<filter>``, so that
the broker hands each message to one member of the group. With ``MqttOptions.mqtt5`` it
speaks MQTT 5 with clean start off and a session that never expires
(``connectors.mqtt.connection.connect``), as persistent as MQTT 3.1.1's
``clean_session=False``.

Catching up (``MqttOptions.catch_up_topic``, set on the pool's workers): after its
first subscription the client also subscribes, unshared, to a topic of its own and
publishes to it, once, a mark that only this process knows. The broker queues a
session's messages in order, so the mark comes after every message that waited in the
session when the client came back: ``catching_up`` is true until it does (its batch
included), then ``on_caught_up`` is called. The pool merges what its workers take while
they catch up (``connectors.mqtt.pool``).

Retiring (``MqttOptions.retire``: the client id of a worker the pool no longer has):
the client resumes the session without subscribing to the data, takes what it holds up
to the mark, unsubscribes the shared subscription, takes what the broker routed to it
before that, up to a second mark, leaves as ``stop`` does and ends the session
(``connectors.mqtt.connection.end_session``); ``retired`` is then done. ``on_session``
is told whether the broker had the session at all.

Topic to (station, metric): ``connectors.mqtt.topics``; payloads: ``connectors.mqtt.payload``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from connectors.ingest import (
    Admission,
    DeadLetter,
    Inbound,
    MicroBatcher,
    Produce,
    Stations,
    deliver,
)
from connectors.mqtt.broker_drops import DropWatcher
from connectors.mqtt.connection import (
    AckFence,
    Connection,
    PubAck,
    ack_together,
    connect,
    describe_failure,
    end_session,
    new_client,
    set_done,
)
from connectors.mqtt.options import MqttOptions
from connectors.mqtt.payload import decode_columns
from connectors.mqtt.topics import TopicTemplate
from engine.contracts.batch import ReadingBlock

__all__ = ["STOP_TIMEOUT_S", "Connection", "MqttIngest", "describe_failure"]

log = logging.getLogger(__name__)

#: The longest ``stop`` takes to leave the broker (s): the batch in hand written and
#: acknowledged (a local fsync: milliseconds), then the fence (``AckFence``).
STOP_TIMEOUT_S = 20.0

#: While catching up, a new catch-up mark is published every ``REMARK_S`` seconds (s):
#: a mark can be lost (a broker whose queue limit dropped it, a broker restarted without
#: its queue), and a worker waiting for it would hold the pool's merge back for ever.
REMARK_S = 10.0

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


def _left_to_broker(item: object) -> bool:
    """A QoS 1 message (``_leave``): the broker sends it again unless acknowledged."""
    return isinstance(item, Inbound) and item.ack is not None


@dataclass
class _Flush:
    """Put in the batcher by ``_leave``: done once every message taken before it is
    written and its PUBACK queued (the batcher hands items over in the order put)."""

    done: asyncio.Future[None]


class MqttIngest:
    """Subscribes, decodes, micro-batches, produces durably, then acknowledges."""

    def __init__(
        self,
        options: MqttOptions,
        produce: Produce,
        dead_letter: DeadLetter,
        known_stations: Stations | None = None,
        on_broker_drops: BrokerDrops | None = None,
        admission: Admission | None = None,
        on_sequence: Sequences | None = None,
    ) -> None:
        self.options = options
        self._on_sequence = on_sequence
        self.template = TopicTemplate(options.topic_template)
        #: What the client subscribes to: the template's filter, shared or not.
        self.subscription = self.template.subscription
        if options.share_group is not None:
            self.subscription = f"$share/{options.share_group}/{self.subscription}"
        self._produce = produce
        self._dead_letter = dead_letter
        self._on_broker_drops = on_broker_drops
        #: Stations (and their metrics) accepted; others go to dead-letter. Replaced on
        #: hot reload.
        self.known_stations = known_stations
        self.admission = admission or Admission()
        self.counters: Counter[str] = Counter()
        self.subscribed = threading.Event()
        self.connection = Connection()
        self._batcher: MicroBatcher[Inbound | _DropCount | _Flush | _Mark] = MicroBatcher(
            options.max_readings, options.linger_ms
        )
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        #: False from ``_leave`` (pause, stop) until the next connect: QoS 1 messages that
        #: arrive are left unacknowledged to the broker, which sends them again later.
        #: ``_gate`` makes its change and the batcher's puts one order.
        self._taking = True
        self._gate = threading.Lock()
        self._leaving: asyncio.Task[None] | None = None  # ``_leave``'s disconnect, under way
        self._stopping = False
        #: Resolved by the broker's UNSUBACK: ``_fence``'s, the only UNSUBSCRIBE sent.
        self._ack_fence = AckFence()
        self._client = new_client(options, options.client_id, clean_session=False)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_unsubscribe = self._on_unsubscribe
        #: True until the catch-up mark of this process comes back (``_handle``).
        self.catching_up = options.catch_up_topic is not None
        #: Called (on the event loop) once ``catching_up`` turns false.
        self.on_caught_up: Callable[[], None] | None = None
        #: The catch-up marks this process published (random: never an earlier one's):
        #: a new one after each subscription while catching up and every ``REMARK_S``.
        self._marks: set[bytes] = set()
        self._marked = False  # a mark is published (the first one: "session present")
        self._remark: asyncio.TimerHandle | None = None
        #: Called (on the event loop) with the first CONNACK's "session present".
        self.on_session: Callable[[bool], None] | None = None
        self._session_present = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Retiring: done once the session is ended; ``_retire``'s second mark.
        self.retired: asyncio.Future[None] | None = None
        self._second_mark: asyncio.Future[None] | None = None
        #: The retiring client's second marks: queued after every catch-up mark.
        self._second_marks: set[bytes] = set()
        self._retiring: asyncio.Task[None] | None = None
        self._sys_client: mqtt.Client | None = None
        if options.broker_drops_topic is not None and on_broker_drops is not None:
            watcher = DropWatcher(options, lambda total: self._batcher.put(_DropCount(total)))
            self._sys_client = watcher.client

    @property
    def state(self) -> str:
        """``subscribed`` (taking messages), ``connected`` (not subscribed yet) or
        ``disconnected``: what ``/readyz`` and ``vigil status`` report."""
        if self.subscribed.is_set():
            return "subscribed"
        # ``connection``, not paho's own state: paho still says connected while its
        # disconnect callback runs, after ``subscribed`` was cleared.
        return "connected" if self.connection.connected else "disconnected"

    # ---- paho callbacks (paho's network thread; an exception here would end it) ---------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            self._failed(f"refused by the broker: {reason_code}")
            if self.retired is not None and self._loop is not None:
                # A client id the broker refuses (ACLs) has no session to take: give up.
                error = ConnectionRefusedError(f"refused by the broker: {reason_code}")
                self._loop.call_soon_threadsafe(self._give_up, error)
            return
        if not self._marked:
            self._session_present = bool(flags.session_present)
            if self.on_session is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self.on_session, self._session_present)
        # Retiring, the session keeps the subscription it has: none is added.
        topics = [] if self.options.retire else [(self.subscription, 1)]
        if self.options.catch_up_topic is not None:
            topics.append((self.options.catch_up_topic, 1))
        client.subscribe(topics)
        self._set(connected=True, error=None)
        self.connection.failures = 0
        log.info("MQTT connected to %s:%s", self.options.host, self.options.port)

    def _on_connect_fail(self, client, userdata) -> None:  # type: ignore[no-untyped-def]
        # paho calls this inside its ``except OSError`` around the connect: the
        # exception being handled is the reason (refused, DNS, TLS), which paho drops.
        self._failed(describe_failure(sys.exc_info()[1]))

    def _failed(self, reason: str) -> None:
        c = self.connection
        c.failures += 1
        repeat = reason == c.error  # paho retries every few seconds: once per reason
        self._set(connected=False, error=reason)
        log.log(
            logging.DEBUG if repeat else logging.ERROR,
            "MQTT cannot connect to %s:%s: %s (attempt %d; retrying with backoff)",
            self.options.host,
            self.options.port,
            reason,
            c.failures,
        )

    def _set(self, *, connected: bool, error: str | None) -> None:
        c = self.connection
        if c.connected != connected or not c.since_ms:
            c.since_ms = int(time.time() * 1000)
        c.connected, c.error = connected, error

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        if any(rc.is_failure for rc in reason_codes):
            log.error("MQTT subscription to %s refused: %s", self.subscription, reason_codes)
            return
        if self.catching_up:
            # After the SUBACK: the subscription exists, so the broker queues the mark
            # behind whatever the session holds. After each (re)subscription: a broker
            # that restarted without its queue lost the earlier one.
            self._marked = True
            self._publish_mark(self._marks)
        self.subscribed.set()

    def _publish_mark(self, marks: set[bytes]) -> None:
        """Publish a new mark of this process, added to ``marks`` (thread-safe, as paho's
        publish)."""
        assert self.options.catch_up_topic is not None
        mark = os.urandom(8).hex().encode()
        marks.add(mark)
        self._client.publish(self.options.catch_up_topic, mark, qos=1)

    def _mark_again(self) -> None:
        """Every ``REMARK_S`` while catching up: a mark that was lost is not waited for
        for ever (the broker queues a new one behind what it holds now)."""
        if not self.catching_up or self._loop is None:
            return
        if self.subscribed.is_set():
            self._publish_mark(self._marks)
        self._remark = self._loop.call_later(REMARK_S, self._mark_again)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        # Disconnected first, then not subscribed: whoever reads ``state`` in between
        # sees "disconnected", never "connected" (a /readyz detail said so once).
        if self.connection.connected:
            self._set(connected=False, error=f"disconnected: {reason_code}")
        self.subscribed.clear()
        if reason_code != 0:
            log.warning("MQTT disconnected (%s); paho reconnects", reason_code)

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

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        self._ack_fence.answered()

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

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.options.retire:
            self.retired = self._loop.create_future()
        self._batcher.bind(self._loop)
        self._task = asyncio.ensure_future(self._run())
        if self.catching_up:
            self._remark = self._loop.call_later(REMARK_S, self._mark_again)
        for client in (self._client, self._sys_client):
            if client is not None and not (client is self._client and self._paused):
                self._connect(client)

    def _connect(self, client: mqtt.Client) -> None:
        if client is self._client:
            self._taking = True  # paho's thread is stopped: no message races this
        connect(client, self.options)

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self, why: str) -> None:
        """Stop taking messages (the disk is nearly full): leave the broker (``_leave``),
        so that it keeps what devices send meanwhile (persistent session) and redelivers
        what was not acknowledged. Before ``start`` too; idempotent; on the event loop;
        returns at once, the disconnect follows the batch in hand."""
        if self._paused:
            return
        self._paused = True
        log.error("MQTT ingest paused (%s): the broker keeps the messages until it resumes", why)
        if self._task is not None:
            self._leave()

    def _leave(self) -> asyncio.Task[None]:
        """Stop taking QoS 1 messages and leave the broker once the batch in hand is
        written and acknowledged, and the broker has read the acknowledgements
        (``_fence``), so that it sends none of it again. The QoS 1 messages received and
        not yet in a batch are left to the broker with what arrives meanwhile: never
        acknowledged, it sends them again (after a restart, or on resume). The one
        sequence of ``pause`` and ``stop``; returns the task under way (one at a time)."""
        if self._leaving is None:
            flushed = asyncio.get_running_loop().create_future()
            with self._gate:
                self._taking = False
                # Not written first: the broker keeps up to ``max_inflight_messages``
                # (20000 in the shipped config) unacknowledged in this socket, tens of
                # batches behind the one in hand; writing them all made a stop on a slow
                # disk overrun ``STOP_TIMEOUT_S``, and the broker sent the batch in hand
                # again (a second copy in the log).
                self._batcher.remove(_left_to_broker)
                self._batcher.put(_Flush(flushed))
            self._leaving = asyncio.ensure_future(self._fence(flushed))
        return self._leaving

    async def _fence(self, flushed: asyncio.Future[None]) -> None:
        """``_leave``'s work: once ``flushed`` (or the ingest task ended: then nothing
        more is acknowledged), leave the broker after it has read the last PUBACKs
        (``AckFence.leave``); connect again if resumed meanwhile (never once stopping)."""
        try:
            assert self._task is not None  # started
            await asyncio.wait([flushed, self._task], return_when=asyncio.FIRST_COMPLETED)
            await self._ack_fence.leave(self._client)
        finally:
            self._leaving = None
        if not self._paused and not self._stopping:
            self._connect(self._client)

    def resume(self) -> None:
        """Take messages again after ``pause``; idempotent."""
        if not self._paused:
            return
        self._paused = False
        log.warning("MQTT ingest resumed")
        if self._task is not None and self._leaving is None and not self._stopping:
            self._connect(self._client)

    async def join(self) -> None:
        """Wait for the ingest task: raises what made it fail, CancelledError once stopped.

        Shielded: cancelling the caller leaves the task to ``stop``, which ends it only
        after the broker connection is closed.
        """
        assert self._task is not None, "join() before start()"
        await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Leave the broker as ``pause`` does (``_leave``): the batch in hand is written
        and acknowledged, the broker has read those PUBACKs before the disconnect, and
        what was not taken it sends again after a restart: nothing taken comes twice.
        Then the ingest task ends. At most ``STOP_TIMEOUT_S``: past it (the log or the
        broker does not answer) it disconnects anyway, and the broker may send the
        batch in hand again."""
        self._stopping = True
        if self._task is not None and not self._task.done():
            leaving = self._leave()
            done, _ = await asyncio.wait([leaving], timeout=STOP_TIMEOUT_S)
            if not done:
                log.warning(
                    "MQTT ingest: the batch in hand was not written and acknowledged within"
                    " %.0f s: disconnecting (the broker may send it again)",
                    STOP_TIMEOUT_S,
                )
                leaving.cancel()
                await asyncio.wait([leaving])
        if self._remark is not None:
            self._remark.cancel()
        for client in (self._client, self._sys_client):
            if client is not None:
                client.disconnect()
                client.loop_stop()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                # Raised to ``join``'s caller already; raised again here it would cut
                # short the shutdown of everything stopped after the ingest.
                log.warning("MQTT ingest had failed: %r", exc)

    def _give_up(self, error: BaseException) -> None:
        if self.retired is not None and not self.retired.done():
            self.retired.set_exception(error)

    async def _retire(self) -> None:
        """What a retiring client does once it has caught up (the module's docstring)."""
        assert self.retired is not None
        try:
            await self._end_session()
        except Exception as exc:  # the worker exits with it; the next start tries again
            self._give_up(exc)

    async def _end_session(self) -> None:
        assert self.retired is not None and self.options.catch_up_topic is not None
        await self._ack_fence.unsubscribe(self._client, self.subscription)
        # What the broker routed here before it took the UNSUBSCRIBE may still be queued
        # (beyond the in-flight window): behind a second mark.
        self._second_mark = second = asyncio.get_running_loop().create_future()
        while not second.done():  # a new mark every REMARK_S: one may be lost
            self._publish_mark(self._second_marks)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(second), REMARK_S)
        with self._gate:
            self._taking = False
        await self._ack_fence.leave(self._client)  # the broker has read the PUBACKs
        await asyncio.to_thread(end_session, self.options, self.options.client_id)
        log.log(
            logging.WARNING if self._session_present else logging.DEBUG,
            "MQTT ingest: the session of %s is ended",
            self.options.client_id,
        )
        set_done(self.retired)

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

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

Catching up (``MqttOptions.catch_up_topic``) and retiring (``MqttOptions.retire``),
set on the pool's workers: ``connectors.mqtt.client_catchup``. Receiving, decoding,
batching and acknowledging: ``connectors.mqtt.client_receive``. ``MqttIngest`` has both
as bases and holds the connection and the lifecycle (``start``, ``pause``, ``resume``,
``stop``).

Topic to (station, metric): ``connectors.mqtt.topics``; payloads: ``connectors.mqtt.payload``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

import paho.mqtt.client as mqtt

from connectors.ingest import (
    Admission,
    DeadLetter,
    Inbound,
    MicroBatcher,
    Produce,
    Stations,
)
from connectors.mqtt import client_catchup
from connectors.mqtt.broker_drops import DropWatcher
from connectors.mqtt.client_receive import (
    BrokerDrops,
    Receiving,
    Sequences,
    _DropCount,
    _Flush,
    _Mark,
)
from connectors.mqtt.connection import (
    AckFence,
    Connection,
    connect,
    describe_failure,
    new_client,
)
from connectors.mqtt.options import MqttOptions
from connectors.mqtt.topics import TopicTemplate

__all__ = ["STOP_TIMEOUT_S", "Connection", "MqttIngest", "describe_failure"]

log = logging.getLogger(__name__)

#: The longest ``stop`` takes to leave the broker (s): the batch in hand written and
#: acknowledged (a local fsync: milliseconds), then the fence (``AckFence``).
STOP_TIMEOUT_S = 20.0


def _left_to_broker(item: object) -> bool:
    """A QoS 1 message or a catch-up mark (``_leave``): the broker sends it again unless
    acknowledged. A mark left behind the session's backlog comes back after it: taken
    alone now, it would end the catch-up before that backlog is in (a pause while
    catching up, then the backlog read as live traffic on resume)."""
    return isinstance(item, _Mark) or (isinstance(item, Inbound) and item.ack is not None)


class MqttIngest(Receiving):
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

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        # Disconnected first, then not subscribed: whoever reads ``state`` in between
        # sees "disconnected", never "connected" (a /readyz detail said so once).
        if self.connection.connected:
            self._set(connected=False, error=f"disconnected: {reason_code}")
        self.subscribed.clear()
        if reason_code != 0:
            log.warning("MQTT disconnected (%s); paho reconnects", reason_code)

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        self._ack_fence.answered()

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.options.retire:
            self.retired = self._loop.create_future()
        self._batcher.bind(self._loop)
        self._task = asyncio.ensure_future(self._run())
        if self.catching_up:
            self._remark = self._loop.call_later(client_catchup.REMARK_S, self._mark_again)
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

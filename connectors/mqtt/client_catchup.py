"""Catch-up marks and retiring, for one MQTT ingest client (``connectors.mqtt.client``).

Catching up (``MqttOptions.catch_up_topic``, set on the pool's workers): after its
first subscription the client also subscribes, unshared, to a topic of its own and
publishes to it, once, a mark that only this process knows. The broker queues a
session's messages in order, so the mark comes after every message that waited in the
session when the client came back: ``catching_up`` is true until it does (its batch
included), then ``on_caught_up`` is called. The pool merges what its workers take while
they catch up (``connectors.mqtt.pool_backlog``).

Retiring (``MqttOptions.retire``: the client id of a worker the pool no longer has):
the client resumes the session without subscribing to the data, takes what it holds up
to the mark, unsubscribes the shared subscription, takes what the broker routed to it
before that, up to a second mark, leaves as ``stop`` does and ends the session
(``connectors.mqtt.connection.end_session``); ``retired`` is then done. ``on_session``
is told whether the broker had the session at all.

``CatchUp`` is a base of ``MqttIngest``: it reads that client's options, paho client and
state (declared below), which ``MqttIngest.__init__`` sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading

import paho.mqtt.client as mqtt

from connectors.mqtt.connection import AckFence, end_session, set_done
from connectors.mqtt.options import MqttOptions

__all__ = ["REMARK_S", "CatchUp"]

# The client's logger: what is said here reads as the client's, as before the split.
log = logging.getLogger("connectors.mqtt.client")

#: While catching up, a new catch-up mark is published every ``REMARK_S`` seconds (s):
#: a mark can be lost (a broker whose queue limit dropped it, a broker restarted without
#: its queue), and a worker waiting for it would hold the pool's merge back for ever.
REMARK_S = 10.0


class CatchUp:
    """The catch-up marks and the retiring of ``MqttIngest`` (a base of it; see the
    module)."""

    # ``MqttIngest``'s, set by its ``__init__`` and read here.
    options: MqttOptions
    subscription: str
    subscribed: threading.Event
    catching_up: bool
    retired: asyncio.Future[None] | None
    _client: mqtt.Client
    _loop: asyncio.AbstractEventLoop | None
    _marks: set[bytes]
    _remark: asyncio.TimerHandle | None
    _second_mark: asyncio.Future[None] | None
    _second_marks: set[bytes]
    _ack_fence: AckFence
    _gate: threading.Lock
    _taking: bool
    _session_present: bool

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

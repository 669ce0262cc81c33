"""The Kafka dispatcher's ownership: take the dispatcher over while this worker is
assigned the dispatch topic's one partition, and hand it over when it is revoked.

Every worker is a member of the consumer group ``<app_id>-dispatcher`` on the
one-partition topic ``<app_id>-dispatch`` (``engine.runtime.dispatch.kafka`` forwards
the alerts to it). Whichever is assigned the partition runs the ``DispatchService``
until the partition is revoked (``DispatchOwnership.run``, ``_Listener``).

The state lives in the compacted topic ``<app_id>-dispatch-state`` and moves with the
partition (``engine.runtime.dispatch.kafka_store``): each store is one Kafka transaction
holding the new notifications, the state that made them and the offset of the dispatch
topic they cover; the transactional id is the app's, so a new owner fences the old one
before it reads the state. Delivery resumes, same keys, where the old owner left off.

An orderly hand-over sends nothing twice: the group completes a rebalance only once
every member's revoke callback returned (aiokafka awaits it before it rejoins), and the
revoked owner's callback starts no send any more, waits up to ``HANDOVER_S`` for the
sends in flight and commits their marks before it returns; the next owner loads them.
A crash (SIGKILL), a stall past the session timeout or a send slower than
``HANDOVER_S`` can still send an entry twice, with the same key (at least once).

A service that fails is let go without storing (its state says notifications were made
whose entries are lost) and, unless a newer owner fenced it, taken over again from the
stored state. A worker that owns the partition but cannot take the dispatcher over ends
the process (``crash``) rather than sit there looking healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ProducerFenced

from engine.contracts.alerts import unpack_events
from engine.contracts.notification import Receiver
from engine.dispatch.clock import SystemClock
from engine.dispatch.config import DispatchConfig
from engine.runtime.config_sections import DispatchSettings
from engine.runtime.dispatch.forwarding import owner_client_id
from engine.runtime.dispatch.kafka_service import KafkaDispatchService, dispatch_topics
from engine.runtime.dispatch.kafka_store import MAX_RECORD_BYTES, KafkaOutbox
from engine.runtime.dispatch.links import AckLinks
from engine.runtime.dispatch.wiring import build_receivers

__all__ = ["HANDOVER_S", "DispatchOwnership"]

log = logging.getLogger("vigil.dispatch")

#: Tries to take over an assigned dispatch partition (the broker may be restarting),
#: and the seconds between two.
_ACQUIRE_ATTEMPTS = 5
_ACQUIRE_RETRY_S = 2.0
#: The dispatcher consumers' rebalance timeout (ms): how long the group waits for a
#: member's revoke callback (the hand-over below) before it goes on without it.
_REBALANCE_TIMEOUT_MS = 20_000
#: Seconds a revoked owner waits for its sends in flight before it stores their marks
#: and lets the rebalance complete: with that store, well within the rebalance timeout.
HANDOVER_S = 5.0


class DispatchOwnership:
    """Runs the dispatcher of ``config`` while this worker owns the dispatch partition of
    app ``app_id`` (module docstring). ``service`` is the running one, else None;
    ``web_port`` is this worker's API port (its client id in the group says it, for the
    peers' forwarding); ``crash`` ends the process with an exception (Faust's crash of
    the app). ``run`` is the worker's long-lived task, ``stop`` its end."""

    def __init__(
        self,
        settings: DispatchSettings,
        config: DispatchConfig,
        *,
        bootstrap: str,
        app_id: str,
        web_port: int,
        links: AckLinks | None,
        crash: Callable[[BaseException], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.config = config
        self.bootstrap = bootstrap
        self.topic, self.state_topic = dispatch_topics(app_id)
        self.group_id = f"{app_id}-dispatcher"
        self.tp = TopicPartition(self.topic, 0)
        self.web_port = web_port
        self.links = links
        self.crash = crash
        #: This worker in the state topic's owner marker (``KafkaOutbox.load``).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{web_port}"
        #: The service while this worker owns the dispatcher, else None.
        self.service: KafkaDispatchService | None = None
        self._service_task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._run_task: asyncio.Task[Any] | None = None
        self._restarting: asyncio.Task[None] | None = None
        #: Set by ``stop``: nothing takes the dispatcher over any more.
        self._stopping = False
        #: The crash of the app a failed restart asked for (a reference keeps it alive).
        self._crashing: asyncio.Task[None] | None = None
        #: Held while taking over or releasing the dispatcher.
        self.lock = asyncio.Lock()

    async def run(self) -> None:
        """Consume the dispatch topic for the life of the worker."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=10_000,
            rebalance_timeout_ms=_REBALANCE_TIMEOUT_MS,
            client_id=owner_client_id(self.web_port),
            heartbeat_interval_ms=2_000,
        )
        self._consumer = consumer
        self._run_task = asyncio.current_task()
        consumer.subscribe([self.topic], listener=_Listener(self))
        await consumer.start()
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            service = self.service
            if service is None:
                continue
            for records in batches.values():
                for record in records:
                    bad: list[tuple[bytes, Exception]] = []
                    events = unpack_events(record.value or b"", bad)
                    for _, exc in bad:  # the alerts agent dead-lettered them before forwarding
                        log.error("dispatch topic @%d: bad event: %s", record.offset, exc)
                    service.receive(events)
                    service.outbox.position = record.offset + 1

    async def acquire(self) -> None:
        """This worker was assigned the dispatch partition: fence the previous owner,
        restore its committed state, start the service and resume reading where the
        state leaves off."""
        assert self._consumer is not None
        d = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            transactional_id=self.group_id,
            enable_idempotence=True,
            acks="all",
            max_request_size=MAX_RECORD_BYTES,
        )
        await producer.start()
        self._producer = producer
        outbox = await KafkaOutbox.load(
            self.bootstrap, producer, self.state_topic, self.tp, self.group_id, self.owner
        )
        committed = await self._consumer.committed(self.tp)
        if committed is None:
            await self._consumer.seek_to_beginning(self.tp)
        else:
            self._consumer.seek(self.tp, committed)
        outbox.position = committed
        receivers: dict[str, Receiver] = build_receivers(self.config)
        service = KafkaDispatchService(
            self.config, outbox, receivers, SystemClock(), links=self.links,
            retry_initial_s=d.retry_initial_s, retry_max_s=d.retry_max_s,
            forget_after_ms=int(d.forget_after_s * 1000),
        )  # fmt: skip
        self.service = service
        self._service_task = asyncio.create_task(self._serve(service, d.tick_s))
        log.warning(
            "dispatcher: this worker owns it now (%d alerts, %d notifications pending)",
            len(service.dispatcher.lifecycle.states),
            sum(service.pending().values()),
        )

    async def _serve(self, service: KafkaDispatchService, tick_s: float) -> None:
        try:
            await service.run_forever(tick_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A store failed (fenced by a new owner, the broker away): what this service
            # made since its last commit is not stored, and must not be (its state says
            # notifications were made whose entries are lost). Drop it and, if this worker
            # still owns the partition, start again from the committed state.
            # A store queued behind the fenced one fails otherwise (aiokafka's producer
            # is then in a fatal state): the outbox remembers the fence.
            fenced = isinstance(exc, ProducerFenced) or service.outbox.fenced
            if fenced:
                # Another worker's producer took the transactional id: the group gave it
                # the partition while this one stood still (a stall past the session
                # timeout). This worker's assignment is stale until its consumer hears of
                # the rebalance; taking over now would fence the rightful owner. The
                # group assigns the partition again if it is this worker's.
                log.error("dispatcher stopped: fenced by a newer owner; waiting for the group")
            else:
                log.exception("dispatcher stopped; starting again from the stored state")
            if self.service is service:
                # Until the restart has the lock, the API answers as a worker without
                # the dispatcher (503 or forwarded): an acknowledgement or silence stored
                # now would commit the failed service's state.
                self.service = None
                self._service_task = None
                if not self._stopping:
                    restart = asyncio.create_task(self._restart(service, again=not fenced))
                    restart.add_done_callback(self._restart_done)
                    self._restarting = restart

    async def _restart(self, failed: KafkaDispatchService, *, again: bool) -> None:
        """Let go of ``failed`` (nothing stored) and, if ``again``, take over anew."""
        async with self.lock:
            for receiver in failed.receivers.values():
                with contextlib.suppress(Exception):
                    await receiver.aclose()
            # The failed service was let go here, not by ``release`` (it is no longer
            # ``self.service``): say so as ``release`` does, once per service let go.
            log.warning("dispatcher: released")
            if self.service is not None:
                return  # the group assigned the partition again meanwhile: a new one runs
            await self.release(store=False)
            if again:
                await self.take_over()

    def _restart_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if self._stopping:
            log.error("dispatcher: restart failed while stopping", exc_info=exc)
            return
        self._crashing = asyncio.create_task(self._end_process(exc))

    async def _end_process(self, exc: BaseException) -> None:
        """This worker may own the dispatch partition with no dispatcher: it would drop
        what it reads and dispatch nothing until the next rebalance, looking healthy.
        End the process as a failed long-lived task does (Faust's crash of the app, exit
        status 1): a supervisor restarts it and the group gives the partition on."""
        log.error("dispatcher: %r; the worker stops for a restart", exc, exc_info=exc)
        await self.crash(exc)

    async def take_over(self) -> None:
        """``acquire``, tried again a few times while the partition is still ours and
        the worker is not stopping (call with ``lock`` held). Never raises: if it cannot
        take over, it ends the process (``_end_process``) -- its callers are aiokafka's
        rebalance listener, which swallows exceptions, and a task nobody awaits."""
        try:
            for attempt in range(1, _ACQUIRE_ATTEMPTS + 1):
                if self._stopping:
                    return
                if self._consumer is None or self.tp not in self._consumer.assignment():
                    return
                try:
                    await self.acquire()
                    return
                except Exception:
                    log.exception("dispatcher: could not take over (attempt %d)", attempt)
                    await self.release(store=False)
                await asyncio.sleep(_ACQUIRE_RETRY_S)
            raise RuntimeError("the dispatcher could not take over; see the errors above")
        except Exception as exc:
            await self._end_process(exc)

    async def release(self, *, store: bool = True) -> None:
        """The partition was revoked (or the worker stops): hand over (unless ``store``
        is False: a failed service's state must not be stored) -- start no send, wait up
        to ``HANDOVER_S`` for those in flight, store the state with their marks and the
        offsets read (an entry still in flight then goes again, same key, from the next
        owner) -- and let go of the transactional producer."""
        service, self.service = self.service, None
        task, self._service_task = self._service_task, None
        if task is not None and not store:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if service is not None:
            try:
                if store:
                    await service.stop(task, drain_s=HANDOVER_S)
                else:
                    for receiver in service.receivers.values():
                        with contextlib.suppress(Exception):
                            await receiver.aclose()
            except Exception:
                log.exception("dispatcher: the last store failed; the next owner resumes earlier")
            log.warning("dispatcher: released")
        elif task is not None:
            task.cancel()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def stop(self) -> None:
        """The worker stops: take nothing over any more, stop reading, release the
        dispatcher, leave the group."""
        self._stopping = True
        restarting, self._restarting = self._restarting, None
        if restarting is not None and not restarting.done():
            restarting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await restarting
        task, self._run_task = self._run_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self.lock:
            await self.release()
        if self._consumer is not None:
            await self._consumer.stop()


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: DispatchOwnership) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if revoked:
            async with self.owner.lock:
                await self.owner.release()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if self.owner.tp in assigned:
            async with self.owner.lock:
                await self.owner.take_over()

"""The dispatcher on the Kafka runtime: one elected dispatcher for the whole app.

Every worker forwards every alert event of the alerts partitions it owns to the
one-partition topic ``<app_id>-dispatch`` (``Topology.alert_senders``: the send is
awaited before the alerts' offsets may commit, as corroboration's are). The workers are
also members of the consumer group ``<app_id>-dispatcher`` on that topic: whichever is
assigned its one partition runs the ``DispatchService`` -- the same routing, grouping,
escalation, silences, acknowledgement and delivery as on the gateway -- until the
partition is revoked. The others pass API requests, acknowledge links and the duty
room's station list and live stream on to it (``engine.runtime.dispatch.forwarding``);
every worker serves the duty room's page (``engine.runtime.dispatch.console``) and its
own station board to the owner, which merges them all (``board_cluster``).

Why one dispatcher rather than one per partition of a topic keyed by group
(``engine/dispatch/README.md``'s first plan): a group must gather all of its alerts,
inhibition compares alerts of different stations (a basin alert covers its gauges),
and silences and rate limits are per receiver across every group: one dispatcher has
the gateway's exact semantics, with no constraint tying routing files' ``group_by`` to
a partitioning, one store, and one place for people's actions to go. Its load is the
alerts, not the readings (the gateway's dispatcher keeps up with ~2,000 transitions/s).

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

from engine.contracts.alerts import AlertEvent, pack_lines
from engine.contracts.notification import Receiver
from engine.dispatch.clock import SystemClock
from engine.dispatch.config import load_dispatch_config
from engine.runtime.config import Settings
from engine.runtime.dispatch.api import install_api
from engine.runtime.dispatch.board import StationBoard
from engine.runtime.dispatch.board_cluster import ClusterBoard, board_route
from engine.runtime.dispatch.board_kafka import BoardReadBack
from engine.runtime.dispatch.console import install_console
from engine.runtime.dispatch.forwarding import (
    OwnerForwarder,
    find_owner,
    group_members,
    owner_client_id,
)
from engine.runtime.dispatch.kafka_service import KafkaDispatchService, dispatch_topics
from engine.runtime.dispatch.kafka_store import MAX_RECORD_BYTES, KafkaOutbox
from engine.runtime.dispatch.wiring import build_receivers, links_of
from engine.runtime.sending import Outgoing
from engine.runtime.topology import Topology
from engine.runtime.web_access import peer_ssl_context
from rules.registry import load_registry

__all__ = ["KafkaDispatch"]

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


class KafkaDispatch:
    """Forwards this worker's alerts to the dispatch topic and runs the dispatcher
    while this worker owns that topic's partition. ``install`` hooks it into the app."""

    def __init__(self, settings: Settings, topology: Topology, bootstrap: str) -> None:
        d = settings.dispatch
        assert d is not None
        self.settings = settings
        self.topology = topology
        self.bootstrap = bootstrap
        self.config = load_dispatch_config(d.routes)
        build_receivers(self.config)  # a bad receiver fails at start, not at ownership
        #: The stations of the duty room's page, and the readings of the partitions this
        #: worker evaluates (read back when assigned to it).
        self.registry = load_registry(settings.stations)
        self.board = StationBoard()
        self.topic, self.state_topic = dispatch_topics(settings.app_id)
        self.group_id = f"{settings.app_id}-dispatcher"
        self.tp = TopicPartition(self.topic, 0)
        #: The port this worker's API listens on (``--web-port`` wins over the settings').
        self.web_port = int(topology.app.conf.web_port)
        self.links = links_of(settings, self.web_port)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{self.web_port}"
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
        self._out = topology.app.topic(
            self.topic, key_serializer="raw", value_serializer="raw", partitions=1
        )

    def install(self) -> None:
        app = self.topology.app
        self.topology.alert_senders.append(self.forward)
        app.task(self.run)

        async def stop(app: Any, **kwargs: Any) -> None:
            await self.stop()

        app.on_before_shutdown.connect(stop)
        to_owner, scheme = self._forwarder()
        router = app.web.web_app.router
        install_api(router, lambda: self.service, to_owner.api)
        self.topology.batch_listeners.append(self.board.observe)
        # Read back the partitions assigned to this worker: after a restart, or taken
        # over from another, they show what they showed before (``board_kafka``).
        telemetry = self.topology.telemetry.get_topic_name()
        BoardReadBack(self.board, self.bootstrap, telemetry, str(app.conf.id)).install(app)
        # The page sees every worker's stations: the owner merges the peers' boards.
        token = self.settings.web.token()
        merged = ClusterBoard(
            self.board, to_owner, self._member_urls(scheme),
            {"Authorization": f"Bearer {token}"} if token else {},
        )  # fmt: skip
        router.add_route("GET", "/api/board", board_route(self.board, merged.epoch))

        async def stop_polling(app: Any, **kwargs: Any) -> None:
            await merged.stop()

        app.on_before_shutdown.connect(stop_polling)
        install_console(
            router, lambda: self.service, lambda: self.registry.stations,
            board=merged, forward=to_owner.api, forward_stream=to_owner.stream,
        )  # fmt: skip

    def _member_urls(self, scheme: str) -> Callable[[], Awaitable[list[str]]]:
        """The web URLs of the dispatcher group's members: every worker of the app."""

        async def urls() -> list[str]:
            members = await group_members(self.bootstrap, self.group_id, scheme)
            return [url for url, _ in members]

        return urls

    def _forwarder(self) -> tuple[OwnerForwarder, str]:
        """What passes this worker's dispatcher requests to the owner, and the scheme:
        HTTPS when the workers' web ports speak it (``web.tls``), else HTTP."""
        tls = self.settings.web.tls
        scheme, context = "http", None
        if tls is not None:
            scheme = "https"
            context = peer_ssl_context(
                tls.cert_file, tls.key_file, tls.peer_ca_file, tls.client_ca_file
            )
        forwarder = OwnerForwarder(
            lambda: find_owner(self.bootstrap, self.group_id, self.tp, scheme), context
        )
        return forwarder, scheme

    async def forward(self, events: list[AlertEvent]) -> None:
        """Every event of an alerts record to the dispatch topic, in one durable write;
        returns once durable."""
        topic = self._out.get_topic_name()
        await self.topology.send_together(
            [Outgoing(topic, record, 0) for record in pack_lines(e.to_json() for e in events)]
        )

    # ---- ownership -------------------------------------------------------------------

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
                    events = []
                    for line in (record.value or b"").split(b"\n"):
                        if not line:
                            continue
                        try:
                            events.append(AlertEvent.from_json(line))
                        except (ValueError, TypeError) as exc:
                            # The alerts agent dead-lettered bad lines before forwarding.
                            log.error("dispatch topic @%d: bad event: %s", record.offset, exc)
                    service.receive(events)
                    service.outbox.position = record.offset + 1

    async def acquire(self) -> None:
        """This worker was assigned the dispatch partition: fence the previous owner,
        restore its committed state, start the service and resume reading where the
        state leaves off."""
        assert self._consumer is not None
        d = self.settings.dispatch
        assert d is not None
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
        await self.topology.app.crash(exc)

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
    def __init__(self, owner: KafkaDispatch) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if revoked:
            async with self.owner.lock:
                await self.owner.release()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if self.owner.tp in assigned:
            async with self.owner.lock:
                await self.owner.take_over()

"""The dispatch service on Kafka: its two topics, and the service whose stores are the
transactions of its ``KafkaOutbox`` (``engine.runtime.dispatch.kafka_store``). The
election of the worker that runs it is ``engine.runtime.dispatch.kafka``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from engine.dispatch.config import DispatchConfig
from engine.runtime.dispatch.kafka_store import MAX_RECORD_BYTES, KafkaOutbox, KafkaPrepared
from engine.runtime.dispatch.service import DispatchService

__all__ = ["OWNERSHIP_S", "KafkaDispatchService", "dispatch_topics", "ensure_dispatch_topics"]

#: Seconds a committed store proves ownership for a delivery: half the dispatcher
#: consumers' session timeout (10 s), the least time in which the group can evict this
#: worker and another can fence it.
OWNERSHIP_S = 5.0


def dispatch_topics(app_id: str) -> tuple[str, str]:
    """(the dispatch topic, its state topic) of an app."""
    return f"{app_id}-dispatch", f"{app_id}-dispatch-state"


async def ensure_dispatch_topics(bootstrap: str, app_id: str, replication: int = 1) -> None:
    """Create the two one-partition topics if missing (idempotent)."""
    events, state = dispatch_topics(app_id)
    min_isr = {"min.insync.replicas": str(min(2, replication))}
    wanted = [
        NewTopic(events, 1, replication, topic_configs={"retention.ms": str(30 * 86_400_000)}),
        NewTopic(
            state,
            1,
            replication,
            topic_configs={
                "cleanup.policy": "compact",
                "segment.ms": str(10 * 60_000),
                "max.message.bytes": str(MAX_RECORD_BYTES),
                **min_isr,
            },
        ),
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        for topic in wanted:
            if topic.name not in existing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([topic])
    finally:
        await admin.close()


class KafkaDispatchService(DispatchService):
    """``DispatchService`` whose stores are transactions of its ``KafkaOutbox``; a
    delivery mark is stored at the next tick (not only every ``_IDLE_STORE_TICKS``).

    Before a delivery it makes sure it still owns the dispatcher: a store that began
    within ``OWNERSHIP_S`` and committed proves it (a new owner's producer would have
    fenced it); past that, one more store is made first, and a fenced one raises and
    stops the service before anything is sent. A worker that stood still (SIGSTOP, a
    long pause) past the group's session timeout so sends nothing its successor sends."""

    outbox: KafkaOutbox

    def __init__(self, config: DispatchConfig, outbox: KafkaOutbox, *args: Any, **kw: Any):
        super().__init__(config, outbox, *args, **kw)
        outbox.on_mark = self._marked
        #: Monotonic start of the newest store that committed (the producer that loaded
        #: the state has just fenced the previous owner: that counts).
        self.confirmed_at = time.monotonic()

    def _marked(self) -> None:
        self._dirty = True

    def _write(self, prepared: KafkaPrepared) -> asyncio.Future[None]:
        started = time.monotonic()
        future = asyncio.ensure_future(self.outbox.commit(prepared))

        def confirmed(done: asyncio.Future[None]) -> None:
            # Also retrieves a failure that no caller awaits (a cancelled store's).
            if not done.cancelled() and done.exception() is None:
                self.confirmed_at = max(self.confirmed_at, started)

        future.add_done_callback(confirmed)
        return future

    async def may_send(self) -> None:
        if time.monotonic() - self.confirmed_at > OWNERSHIP_S:
            await self._store(())

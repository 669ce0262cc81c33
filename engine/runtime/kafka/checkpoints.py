"""Kernel checkpoints on Kafka, and a Faust consumer that never commits past them.

State moves with partitions: the snapshot of telemetry partition ``p``'s
``PartitionProcessor`` (which carries ``next_offset``) is written to partition ``p`` of
the compacted ``<id>-checkpoints`` topic, key ``b"p"``. Only the owner of ``p`` writes
there, so the last record of that partition is always the latest checkpoint: loading is
one seek and one read, whatever compaction has or has not done yet.

The invariant that makes failover lossless: **the committed offset of a telemetry
partition is never ahead of the ``next_offset`` of its durable checkpoint.**
``CheckpointingConsumer._commit_offsets`` enforces it on every commit: it first asks the
registered ``Checkpointer`` to write the checkpoints (acks=all, awaited), and commits for
each telemetry partition at most the ``next_offset`` that the checkpointer reports as
durable; a partition without a durable checkpoint is not committed at all (what is held
back is committed by a later round). A new owner
restores the checkpoint (``next_offset = N``) and Faust resumes at the committed offset
``C <= N``; the processor skips batches below ``N``, so each reading is counted once and
the transitions it re-emits carry the same idempotency keys as the first time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from faust.types import TP

from engine.runtime.kafka.consumer import FencedConsumer, FencedTransport

__all__ = ["CheckpointStore", "Checkpointer", "CheckpointingConsumer", "CheckpointingTransport"]

log = logging.getLogger(__name__)

#: Called before each commit with the offsets Faust wants to commit; writes the
#: checkpoints they need and returns the offsets that are now safe to commit.
Checkpointer = Callable[[Mapping[TP, int]], Awaitable[Mapping[TP, int]]]

MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024


class CheckpointStore:
    """Reads and writes processor snapshots in the compacted checkpoints topic."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        # A load waits for a write in flight. Otherwise a partition revoked while its
        # checkpoint (next_offset N1) was being written and assigned straight back
        # restores the previous one (N0 < N1) while the writer goes on to record N1 as
        # durable and commit up to it: the batches N0..N1 were never applied to the
        # restored state (seen as readings missing from ``accepted``).
        self._lock = asyncio.Lock()

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                max_request_size=MAX_CHECKPOINT_BYTES,
                enable_idempotence=True,
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()  # e.g. the broker is down: no half-started client
                raise
            self._producer = producer
        return self._producer

    async def _ensure_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                fetch_max_bytes=MAX_CHECKPOINT_BYTES,
                max_partition_fetch_bytes=MAX_CHECKPOINT_BYTES,
                isolation_level="read_committed",
                # ``assign`` starts a position reset by this strategy in the background.
                # A plain ``seek`` cancels it (aiokafka drops the answer); were it ever
                # applied, "earliest" only means reading the whole partition, never
                # skipping the latest checkpoint as "latest" would.
                auto_offset_reset="earliest",
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def write(self, blobs: Mapping[int, bytes]) -> None:
        """Write ``{telemetry partition: snapshot}``; returns once all are acknowledged."""
        if not blobs:
            return
        async with self._lock:
            producer = await self._ensure_producer()
            futures = [
                await producer.send(self.topic, value=blob, key=str(p).encode(), partition=p)
                for p, blob in blobs.items()
            ]
            for fut in futures:
                await fut

    async def load(self, partitions: Iterable[int]) -> dict[int, bytes]:
        """The latest snapshot of each of ``partitions`` that has one, in one read.

        Waits for a write in flight, so that what it returns is the latest checkpoint
        that anyone has been told is durable.
        """
        async with self._lock:
            return await self._load(sorted(set(partitions)))

    async def _load(self, partitions: list[int]) -> dict[int, bytes]:
        consumer = await self._ensure_consumer()
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        latest: dict[int, bytes] = {}
        # Defensive: should offset end - 1 not be a readable record (a transaction
        # marker from some other producer), read back further until a record turns
        # up; the last one read is the latest.
        starts = {tp: ends[tp] - 1 for tp in tps if ends[tp] > 0}
        while starts:
            for tp, start in starts.items():
                consumer.seek(tp, start)
            pending = set(starts)
            while pending:
                batches = await consumer.getmany(*pending, timeout_ms=10_000)
                for tp, records in batches.items():
                    for record in records:
                        if record.offset < ends[tp] and record.value is not None:
                            latest[tp.partition] = record.value
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
            starts = {
                tp: max(0, start - 64)
                for tp, start in starts.items()
                if tp.partition not in latest and start > 0
            }
        return latest

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


class CheckpointingConsumer(FencedConsumer):
    """Faust's Kafka consumer, committing only what a durable checkpoint covers."""

    transport: CheckpointingTransport

    async def _commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        """Commit at most what the checkpointer says is durable.

        Faust has taken the acknowledgements of ``offsets`` off its books by now, and
        records every offset it passes on as committed, committed or not. An offset the
        checkpointer holds back (a partition mid-batch, a checkpoint behind) or a whole
        round postponed would then never be committed, unless later records of the
        partition came: the last records of a stream stayed uncommitted for good. So
        what is held back goes back on the books, to be committed by a later round.
        """
        safe: Mapping[TP, int] = offsets
        checkpointer = self.transport.checkpointer
        if checkpointer is not None:
            try:
                safe = await checkpointer(offsets)
            except KafkaError as exc:
                # The broker is away (restart, leader election). Commit nothing this
                # round: the checkpoints and offsets already durable stay consistent,
                # and the next commit interval writes them again. Crashing here would
                # stop the worker for an outage that Faust's own commit rides out.
                log.warning("checkpoint write failed, commit postponed: %r", exc)
                safe = {}
        for tp, offset in offsets.items():
            kept = safe.get(tp)
            if kept is None or kept < offset:
                self._give_back(tp, kept, offset)
        if not safe:
            return False
        return bool(await super()._commit_offsets(safe, start_new_transaction))

    def _give_back(self, tp: TP, kept: int | None, offset: int) -> None:
        """Put the acknowledgements of ``tp`` from ``kept`` (None: from its committed
        offset) up to ``offset`` back on Faust's books: they were taken off for a commit
        to ``offset`` that did not go that far."""
        start = self.acknowledged_to(tp) if kept is None else kept
        if start is None:
            return  # not positioned: revoked meanwhile, its next owner starts over
        acked, index = self._acked[tp], self._acked_index[tp]
        for o in range(start, offset):
            if o not in index:
                index.add(o)
                acked.append(o)


class CheckpointingTransport(FencedTransport):
    """Faust's Kafka transport with ``CheckpointingConsumer`` (URL ``kafka://``)."""

    Consumer: ClassVar[type[Any]] = CheckpointingConsumer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkpointer: Checkpointer | None = None

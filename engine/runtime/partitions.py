"""Each telemetry partition's processor: created, restored, fed in offset order, and
checkpointed with the consumer offsets.

On ``local://`` the processors' state is checkpointed atomically with the offsets (the
embedded log's ``checkpoint_sources``, ``engine.runtime.transport.local``). On
``kafka://`` it is written to the compacted ``<id>-checkpoints`` topic before each offset
commit, and restored from there when a partition is assigned to this worker
(``engine.runtime.kafka.checkpoints``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from faust.types import TP

from engine.contracts.ruleset import RuleSet
from engine.dispatch.delivery import Dispatcher
from engine.evaluation.processor import PartitionProcessor
from engine.runtime.corroboration.stage import CorroborationStage
from engine.runtime.kafka.checkpoints import CheckpointStore
from engine.runtime.kafka.consumer import FencedConsumer
from engine.runtime.transport.local import Transport as LocalTransport

__all__ = ["PartitionStates"]

log = logging.getLogger(__name__)


class PartitionStates:
    """The processors of ``Topology`` (one of its base classes); state set up by the
    topology."""

    app: Any  # the Faust app
    telemetry: Any  # the ``<id>-telemetry`` topic
    ruleset: RuleSet
    lateness_ms: int
    counters: Counter[str]
    dispatcher: Dispatcher
    corroboration: CorroborationStage
    checkpoint_store: CheckpointStore | None
    processors: dict[int, PartitionProcessor]
    #: Telemetry partition -> next_offset of its latest durable Kafka checkpoint.
    _checkpointed: dict[int, int]
    _restore_lock: asyncio.Lock
    #: Bumped at each revocation: a restore begun before it is stale.
    _generation: int
    #: Partition -> the offset its consumer was last rewound to (``_in_order``).
    _rewound_to: dict[int, int]
    #: Partitions whose latest batch is applied but whose alerts are not all sent.
    _busy: set[int]
    _checkpoint_registered: bool

    def _new_processor(self) -> PartitionProcessor:
        # Live: a device clock far ahead of the gateway's fails QC and cannot drag the
        # partition's event time (and every window with it) into the future.
        return PartitionProcessor(
            self.ruleset, lateness_ms=self.lateness_ms, clock=lambda: int(time.time() * 1000)
        )

    def processor(self, partition: int) -> PartitionProcessor:
        proc = self.processors.get(partition)
        if proc is None:
            proc = self._new_processor()
            blob = self._local_log_blob(partition)
            if blob is not None:
                proc.restore(blob)
                log.info(
                    "partition %d: state restored, resuming at offset %d",
                    partition,
                    proc.next_offset,
                )
            self.processors[partition] = proc
        elif proc.ruleset is not self.ruleset:
            proc.swap_rules(self.ruleset)  # at a batch boundary, never inside one
        return proc

    async def _partition_processor(self, partition: int) -> PartitionProcessor:
        if self.checkpoint_store is None:
            return self.processor(partition)
        while partition not in self.processors:
            await self._restore_from_kafka(partition)
        return self.processor(partition)

    async def _in_order(self, message: Any, proc: PartitionProcessor) -> bool:
        """Whether the batch at ``message.offset`` may be handed to ``proc`` now.

        Batches are applied strictly in offset order. One at or below ``next_offset`` is
        (the processor skips those it has). One beyond it is either ahead of the state
        (the state was just restored from a checkpoint behind the stream: after an
        interrupted batch, or a rebalance whose stale fetches reached the stream):
        dropped, and the consumer rewound to ``next_offset`` so that the batches in
        between come first; or past a hole in the log (retention deleted the batches
        in between): applied, with the loss logged and counted. On Kafka the consumer
        tells the two apart (``engine.runtime.kafka.consumer``: a hole is what is still missing
        after a rewind); on the embedded log, the log itself.
        """
        offset, expected = message.offset, proc.next_offset
        if offset <= expected:
            return True
        if not self._is_hole(message, expected):
            self.counters["stale_batches_dropped"] += 1
            if self._rewound_to.get(message.partition) != expected:
                # Once per gap: the events already queued behind this one are dropped
                # here as they come, and the rewound consumer delivers ``expected`` next.
                self._rewound_to[message.partition] = expected
                log.info(
                    "partition %d: batch at offset %d is ahead of the state (%d), rewinding",
                    message.partition,
                    offset,
                    expected,
                )
                try:
                    await self.app.consumer.seek(message.tp, expected)
                except Exception as exc:  # revoked meanwhile: the next owner starts over
                    log.info("partition %d: rewind skipped: %r", message.partition, exc)
            return False
        self.counters["offsets_missing"] += offset - expected
        log.error(
            "partition %d: offsets %d..%d are gone from the log (retention?): "
            "their readings were never evaluated",
            message.partition,
            expected,
            offset - 1,
        )
        return True

    def _is_hole(self, message: Any, expected: int) -> bool:
        """Whether the offsets from ``expected`` up to ``message.offset`` hold no record."""
        consumer = self.app.consumer
        if isinstance(consumer, FencedConsumer):
            hole = consumer.fence.holes.get(message.tp)
            return hole is not None and hole[0] <= expected and hole[1] == message.offset - 1
        transport = self.app.transport
        assert isinstance(transport, LocalTransport)
        records = transport.log.read(message.topic, message.partition, expected, 1)
        return not records or records[0].offset >= message.offset

    # ---- checkpoints -----------------------------------------------------------------------

    def _checkpoint_name(self, partition: int) -> str:
        return f"processor/{self.telemetry.get_topic_name()}/{partition}"

    def _local_log_blob(self, partition: int) -> bytes | None:
        transport = self.app.transport
        if isinstance(transport, LocalTransport):
            return transport.log.blob(self._checkpoint_name(partition))
        return None

    def _register_checkpoints(self) -> None:
        transport = self.app.transport
        if self._checkpoint_registered or not isinstance(transport, LocalTransport):
            return
        topic = self.telemetry.get_topic_name()

        def checkpoints(offsets: Any) -> dict[str, bytes]:
            blobs = {}
            for tp in offsets:
                if isinstance(tp, TP) and tp.topic == topic and tp.partition in self.processors:
                    blobs[self._checkpoint_name(tp.partition)] = self.processors[
                        tp.partition
                    ].snapshot()
            # Written with the offsets in the same synchronous step, as on Kafka counted.
            self.counters["checkpoints_written"] += len(blobs)
            return blobs

        transport.checkpoint_sources.append(checkpoints)
        transport.before_commit.append(self._before_commit)
        self._checkpoint_registered = True

    async def _before_commit(self) -> None:
        """Make the side effects of every acknowledged alert durable before a commit:
        the dispatcher's sinks and the events routed to corroboration (both defer it,
        rather than pay a sync or a broker round trip per alert)."""
        await self.corroboration.flush()
        self.dispatcher.flush()

    # ---- checkpoints on Kafka ------------------------------------------------------------

    async def _restore_from_kafka(self, partition: int) -> None:
        """Before a partition's first batch on this worker: load its latest checkpoint.

        The checkpoints of every other telemetry partition assigned here and not yet
        restored are loaded in the same read, so that after a rebalance the partitions
        do not each wait for a broker round trip of their own. A restore that a
        rebalance overtakes is thrown away (a partition may have been someone else's
        in between); the caller tries again.
        """
        store = self.checkpoint_store
        if store is None or partition in self.processors:
            return
        async with self._restore_lock:
            if partition in self.processors:
                return
            topic = self.telemetry.get_topic_name()
            assigned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}
            wanted = ({partition} | assigned) - self.processors.keys()
            generation = self._generation
            blobs = await store.load(wanted)
            if generation != self._generation:
                return
            for p in sorted(wanted):
                proc = self._new_processor()
                blob = blobs.get(p)
                if blob is not None:
                    proc.restore(blob)
                    self._checkpointed[p] = proc.next_offset
                else:
                    self._checkpointed.pop(p, None)
                log.info(
                    "partition %d: %s, resuming at offset %d",
                    p,
                    "checkpoint restored" if blob is not None else "no checkpoint, fresh state",
                    proc.next_offset,
                )
                self._rewound_to.pop(p, None)
                self.processors[p] = proc

    async def _kafka_checkpoint(self, offsets: Mapping[TP, int]) -> dict[TP, int]:
        """Write the checkpoints a commit needs; returns the offsets safe to commit.

        A telemetry offset is committed at most up to the ``next_offset`` of a durable
        checkpoint, never beyond (module docstring of ``engine.runtime.kafka.checkpoints``).
        """
        assert self.checkpoint_store is not None
        await self._before_commit()
        topic = self.telemetry.get_topic_name()
        safe: dict[TP, int] = {}
        blobs: dict[int, bytes] = {}
        pending: dict[int, int] = {}
        for tp, offset in offsets.items():
            if tp.topic != topic:
                safe[tp] = offset
                continue
            proc = self.processors.get(tp.partition)
            if proc is None:
                continue  # revoked, or never restored here: nothing of ours to commit
            if tp.partition in self._busy:
                continue  # mid-batch: the last checkpoint stands, commit no further
            if self._checkpointed.get(tp.partition, -1) < min(offset, proc.next_offset):
                blobs[tp.partition] = proc.snapshot()  # synchronous: a consistent cut
                pending[tp.partition] = proc.next_offset
        await self.checkpoint_store.write(blobs)
        self._checkpointed.update(pending)
        self.counters["checkpoints_written"] += len(blobs)
        for tp, offset in offsets.items():
            done = self._checkpointed.get(tp.partition) if tp.topic == topic else None
            if done is not None and tp.partition in self.processors:
                safe[tp] = min(offset, done)
        return safe

    async def _on_partitions_revoked(self, app: Any, revoked: set[TP], **kwargs: Any) -> None:
        # Faust has committed (and we checkpointed) what was processed; the state goes
        # with the partition. Keeping it would be stale if the partition came back.
        topic = self.telemetry.get_topic_name()
        self._generation += 1
        for tp in revoked:
            if tp.topic == topic:
                self.processors.pop(tp.partition, None)
                self._checkpointed.pop(tp.partition, None)
                self._rewound_to.pop(tp.partition, None)

"""The embedded transport's consumer: a group of one that owns every partition of its
subscriptions, reads them from the durable log and commits offsets with checkpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, cast

from faust.assignor.client_assignment import ClientAssignment
from faust.transport import base
from faust.transport.consumer import RecordMap
from faust.types import TP, ConsumerMessage

from engine.runtime.transport.local.base import LogTransport, partition_for_key
from engine.runtime.transport.log import LogRecord

__all__ = ["Consumer"]


class Consumer(base.Consumer):
    """Owns every partition of its subscriptions; reads and commits on the local log."""

    transport: LogTransport
    _rebalance_task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._positions: dict[TP, int] = {}
        self._assigned: set[TP] = set()
        self._topics: set[str] = set()

    @property
    def _group(self) -> str:
        return str(self.app.conf.id)

    # ---- subscription and assignment ------------------------------------------------

    async def subscribe(self, topics: Iterable[str]) -> None:
        self._topics = set(topics)
        wanted = {
            TP(topic, p)
            for topic in self._topics
            for p in range(self.transport.ensure_topic(topic))
        }
        if wanted != self._assigned:
            # Like a Kafka group coordinator, rebalance in the background: Faust's
            # callbacks wait on services that wait on the subscription to return.
            self._rebalance_task = asyncio.ensure_future(self._rebalance(wanted))

    async def _rebalance(self, wanted: set[TP]) -> None:
        revoked = self._assigned - wanted
        self.app.on_rebalance_start()
        await self.on_partitions_revoked(revoked)
        self._assigned = set(wanted)
        for tp in wanted:
            self._positions.setdefault(tp, self._start_offset(tp))
        for tp in revoked:
            self._positions.pop(tp, None)
        self._set_assignor_state(wanted)
        self.app.consumer_generation_id += 1
        await self.on_partitions_assigned(set(wanted), self.app.consumer_generation_id)

    def _set_assignor_state(self, tps: set[TP]) -> None:
        # The partition assignor normally learns this from the Kafka group protocol;
        # tables and recovery ask it which partitions are active here.
        actives: dict[str, list[int]] = {}
        for tp in tps:
            actives.setdefault(tp.topic, []).append(tp.partition)
        assignor = self.app.assignor
        assignor._assignment = ClientAssignment(actives=actives, standbys={})
        assignor._active_tps = set(tps)
        assignor._standby_tps = set()
        assignor._topic_groups = {topic: 0 for topic in actives}

    def _start_offset(self, tp: TP) -> int:
        committed = self.transport.log.committed(self._group, tp.topic, tp.partition)
        if committed is not None:
            return committed
        return self.transport.log.earliest(tp.topic, tp.partition)

    def assignment(self) -> set[TP]:
        return set(self._assigned)

    # ---- positions --------------------------------------------------------------------

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed: dict[TP, int] = {}
        for tp in self._assigned:
            offset = self.transport.log.committed(self._group, tp.topic, tp.partition)
            self._positions[tp] = self._start_offset(tp)
            if offset is not None:
                committed[tp] = offset
        return committed

    async def _seek(self, partition: TP, offset: int) -> None:
        self._positions[TP(partition.topic, partition.partition)] = offset

    async def seek_to_beginning(self, *partitions: TP) -> None:
        for tp in partitions:
            self._positions[tp] = self.transport.log.earliest(tp.topic, tp.partition)

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        for tp, offset in partitions.items():
            await self._seek(tp, offset)

    async def position(self, tp: TP) -> int | None:
        return self._positions.get(tp)

    def highwater(self, tp: TP) -> int:
        return self.transport.log.highwater(tp.topic, tp.partition)

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        return {tp: self.highwater(tp) for tp in partitions}

    async def earliest_offsets(self, *partitions: TP) -> Mapping[TP, int]:
        return {tp: self.transport.log.earliest(tp.topic, tp.partition) for tp in partitions}

    def topic_partitions(self, topic: str) -> int | None:
        return self.transport.log.partitions(topic)

    # ---- fetching ---------------------------------------------------------------------

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> RecordMap:
        tps = self._assigned if active_partitions is None else active_partitions
        budget = int(self.app.conf.broker_max_poll_records or 500)
        self.transport.arm_data_event()  # before fetching, so no append is missed
        records = self._fetch(tps, budget)
        if not records and timeout > 0:
            await self.transport.wait_for_data(timeout)
            records = self._fetch(tps, budget)
        return records

    def _fetch(self, tps: Iterable[TP], budget: int) -> RecordMap:
        out: dict[TP, list[LogRecord]] = {}
        for tp in sorted(tps):
            if budget <= 0:
                break
            position = self._positions.get(tp)
            if position is None or position >= self.highwater(tp):
                continue
            batch = self.transport.log.read(tp.topic, tp.partition, position, budget)
            if batch:
                out[tp] = batch
                self._positions[tp] = batch[-1].offset + 1
                budget -= len(batch)
        return cast(RecordMap, out)

    def _to_message(self, tp: TP, record: LogRecord) -> ConsumerMessage:
        return ConsumerMessage(
            record.topic,
            record.partition,
            record.offset,
            record.timestamp / 1000.0,
            0,
            list(record.headers),
            record.key,
            record.value,
            None,
            len(record.key) if record.key is not None else 0,
            len(record.value) if record.value is not None else 0,
            tp,
            generation_id=self.app.consumer_generation_id,
        )

    def _new_topicpartition(self, topic: str, partition: int) -> TP:
        return TP(topic, partition)

    # ---- committing ---------------------------------------------------------------------

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        for hook in self.transport.before_commit:
            await hook()
        blobs: dict[str, bytes] = {}
        for source in self.transport.checkpoint_sources:
            blobs.update(source(offsets))
        self.transport.log.commit(
            self._group, {(tp.topic, tp.partition): off for tp, off in offsets.items()}, blobs
        )
        return True

    # ---- topics and the rest of the interface -------------------------------------------

    async def create_topic(
        self,
        topic: str,
        partitions: int,
        replication: int,
        **kwargs: Any,
    ) -> None:
        self.transport.create_topic(topic, partitions, **kwargs)

    def key_partition(
        self, topic: str, key: bytes | None, partition: int | None = None
    ) -> int | None:
        if partition is not None:
            return partition
        n = self.transport.ensure_topic(topic)
        if key is None:
            return None
        return partition_for_key(key, n)

    def verify_event_path(self, now: float, tp: TP) -> None:
        # One process, no broker: there is no remote fetch path to go stale.
        return None

    def verify_recovery_event_path(self, now: float, tp: TP) -> None:
        return None

    def close(self) -> None:
        return None

    async def on_stop(self) -> None:
        if self._rebalance_task is not None and not self._rebalance_task.done():
            self._rebalance_task.cancel()
        await super().on_stop()

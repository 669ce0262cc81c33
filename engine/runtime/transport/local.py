"""The embedded Faust transport: ``local:///path/to/data`` with no broker.

A Faust app whose broker URL is ``local:///var/lib/vigil`` keeps its topics, partitions
and committed offsets in a ``DurableLog`` under that directory. Agents, ``stream.take``,
producers and tables with changelog recovery work as on Kafka, in one process:

* the consumer owns every partition of every subscribed topic (a group of one), and
  tells Faust so through the usual rebalance callbacks;
* ``send`` returns a future that resolves only after the record is fsynced (group
  commit: sends made in the same event-loop turn, or while the previous write was on
  disk, share one write; the write runs on one writer thread, off the event loop);
* ``commit`` writes the group's offsets together with the checkpoint blobs that
  registered ``CheckpointSource`` callbacks return for those partitions, in one atomic
  write, so kernel state and offsets can never disagree after a crash.

Partitioning by key is Kafka's (murmur2), so a key lands in the same partition on both
transports. Transactions (``processing_guarantee="exactly_once"``) are not supported.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, cast

from aiokafka.partitioner import DefaultPartitioner
from faust.assignor.client_assignment import ClientAssignment
from faust.transport import base
from faust.transport.consumer import RecordMap
from faust.types import TP, ConsumerMessage, HeadersArg, RecordMetadata
from yarl import URL

from engine.runtime.transport.log import Append, DurableLog, LogRecord

__all__ = ["CheckpointSource", "Consumer", "Producer", "Transport", "log_path_from_url"]

#: Called at commit time with the offsets about to be committed; returns
#: ``{blob_name: bytes}`` to store atomically with them.
CheckpointSource = Callable[[Mapping[TP, int]], Mapping[str, bytes]]

_partitioner = DefaultPartitioner()


def log_path_from_url(url: URL | str) -> Path:
    """``local:///abs/dir`` -> /abs/dir; ``local://rel/dir`` -> rel/dir."""
    url = URL(str(url))
    if url.scheme != "local":
        raise ValueError(f"not a local:// URL: {url}")
    if url.host:
        return Path(url.host + url.path)
    if not url.path or url.path == "/":
        raise ValueError(f"local:// URL needs a directory, e.g. local:///var/lib/vigil: {url}")
    return Path(url.path)


def _headers(headers: HeadersArg | None) -> tuple[tuple[str, bytes], ...]:
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((str(k), bytes(v)) for k, v in items)


class Producer(base.Producer):
    """Appends to the durable log; futures resolve once the write is fsynced."""

    transport: Transport

    def __post_init__(self) -> None:
        self._pending: list[tuple[Append, asyncio.Future[RecordMetadata]]] = []
        self._flush_scheduled = False
        self._round_robin: dict[str, itertools.count[int]] = {}
        #: The write on the writer thread now, if any (one at a time: offsets in order).
        self._writing: asyncio.Future[list[int]] | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="vigil-log-writer")

    def _partition_for(self, topic: str, key: bytes | None, partition: int | None) -> int:
        if partition is not None:
            return partition
        n = self.transport.ensure_topic(topic)
        if key is None:
            counter = self._round_robin.setdefault(topic, itertools.count())
            return next(counter) % n
        return int(_partitioner(key, list(range(n)), list(range(n))))

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: HeadersArg | None,
        *,
        transactional_id: str | None = None,
    ) -> Awaitable[RecordMetadata]:
        if transactional_id:
            raise NotImplementedError("the local:// transport has no transactions")
        part = self._partition_for(topic, key, partition)
        ts_ms = int((timestamp if timestamp is not None else time.time()) * 1000)
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self._pending.append((Append(topic, part, key, value, ts_ms, _headers(headers)), fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._write_pending)
        return fut

    def _write_pending(self) -> None:
        # Group commit off the event loop: the sends of this loop turn, and all those
        # made while the previous write was on disk, share one fsynced write on the one
        # writer thread. The loop goes on meanwhile: an fsync that takes the disk 100s
        # of ms (a shared machine) no longer stalls MQTT ingest, the kernels and the
        # dispatcher's deliveries -- that stall was the notification latency's tail.
        self._flush_scheduled = False
        if self._writing is not None or not self._pending:
            return  # a write in flight starts the next when it is done
        pending, self._pending = self._pending, []
        write = asyncio.get_running_loop().run_in_executor(
            self._writer, self.transport.log.append, [rec for rec, _ in pending]
        )
        self._writing = write
        write.add_done_callback(lambda done: self._written(pending, done))

    def _written(
        self,
        pending: list[tuple[Append, asyncio.Future[RecordMetadata]]],
        write: asyncio.Future[list[int]],
    ) -> None:
        self._writing = None
        self._write_pending()  # what came in meanwhile
        exc = asyncio.CancelledError() if write.cancelled() else write.exception()
        if exc is not None:
            for _, fut in pending:
                if not fut.done():
                    fut.set_exception(exc)
            return
        offsets = write.result()
        for (rec, fut), offset in zip(pending, offsets, strict=True):
            if not fut.done():
                tp = TP(rec.topic, rec.partition)
                fut.set_result(
                    RecordMetadata(rec.topic, rec.partition, tp, offset, rec.timestamp / 1000, 0)
                )
        self.transport.notify_data()

    async def send_and_wait(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: HeadersArg | None,
        *,
        transactional_id: str | None = None,
    ) -> RecordMetadata:
        fut = await self.send(
            topic, key, value, partition, timestamp, headers, transactional_id=transactional_id
        )
        return await fut

    async def flush(self) -> None:
        """Return once every send made so far is written (or failed)."""
        await self.buffer.flush()
        while self._pending or self._writing is not None:
            self._write_pending()
            if self._writing is not None:
                await asyncio.wait({self._writing})

    async def create_topic(
        self,
        topic: str,
        partitions: int,
        replication: int,
        **kwargs: Any,
    ) -> None:
        self.transport.create_topic(topic, partitions, **kwargs)

    def key_partition(self, topic: str, key: bytes) -> TP:
        return TP(topic, self._partition_for(topic, key, None))

    def supports_headers(self) -> bool:
        return True


class Consumer(base.Consumer):
    """Owns every partition of its subscriptions; reads and commits on the local log."""

    transport: Transport
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
        return int(_partitioner(key, list(range(n)), list(range(n))))

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


class Transport(base.Transport):
    """Faust transport over a ``DurableLog`` directory (URL ``local:///dir``)."""

    Consumer: ClassVar[type[Consumer]] = Consumer
    Producer: ClassVar[type[Producer]] = Producer

    driver_version = "vigil-local-1"
    default_port = 0

    def __init__(self, url: list[URL], app: Any, loop: asyncio.AbstractEventLoop | None = None):
        super().__init__(url, app, loop=loop)
        self.log = DurableLog.shared(log_path_from_url(url[0]))
        self.checkpoint_sources: list[CheckpointSource] = []
        #: Awaited before each commit: what the committed records caused is made durable.
        self.before_commit: list[Callable[[], Awaitable[None]]] = []
        self._data_event: asyncio.Event | None = None

    def ensure_topic(self, topic: str) -> int:
        """Partition count of ``topic``, creating it with the app's default if new."""
        n = self.log.partitions(topic)
        if n is None:
            self.log.create_topic(topic, int(self.app.conf.topic_partitions))
            n = self.log.partitions(topic)
        assert n is not None
        return n

    def create_topic(self, topic: str, partitions: int, **kwargs: Any) -> None:
        retention = kwargs.get("retention")
        self.log.create_topic(
            topic,
            partitions,
            retention_s=float(retention) if retention is not None else None,
            compacting=bool(kwargs.get("compacting")),
        )

    def notify_data(self) -> None:
        if self._data_event is not None:
            self._data_event.set()

    def arm_data_event(self) -> None:
        if self._data_event is None:
            self._data_event = asyncio.Event()
        self._data_event.clear()

    async def wait_for_data(self, timeout: float) -> None:
        """Wait until a producer appends, at most ``timeout`` seconds."""
        if self._data_event is None:
            self._data_event = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._data_event.wait(), timeout)

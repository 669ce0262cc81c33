"""The embedded transport's producer: appends to the durable log by group commit, off
the event loop; a send's future resolves once its record is fsynced."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from faust.transport import base
from faust.types import TP, HeadersArg, RecordMetadata

from engine.runtime.transport.local.base import LogTransport, partition_for_key
from engine.runtime.transport.log import Append

__all__ = ["Producer"]


def _headers(headers: HeadersArg | None) -> tuple[tuple[str, bytes], ...]:
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((str(k), bytes(v)) for k, v in items)


class Producer(base.Producer):
    """Appends to the durable log; futures resolve once the write is fsynced."""

    transport: LogTransport

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
        return partition_for_key(key, n)

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

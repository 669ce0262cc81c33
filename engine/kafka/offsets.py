"""Which offsets a Kafka partition really holds: tells a hole in the log from a stale event.

A partition's processor applies batches strictly in offset order: the batch at
``next_offset`` and nothing beyond it. When the stream hands it a later offset first,
that is one of two things:

* a **stale event**: fetched before a rebalance and delivered after it, ahead of the
  re-fetch from the committed offset (Faust does this now and then to a partition this
  worker keeps through the rebalance). Applying it would skip the batches in between;
* a **hole**: the offsets in between hold no record any more (retention deleted them,
  compaction, a transaction marker). Waiting for them would stall the partition.

``LogProbe.first_offset`` asks the broker which one it is, with a consumer of its own
outside the group; it runs only when the stream skips ahead, never per batch.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["LogProbe"]


class LogProbe:
    """Reads where records start in a topic partition, for one worker."""

    def __init__(self, bootstrap: str, *, timeout_s: float = 30.0) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # one consumer, one question at a time

    async def _ensure_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                # Below the log start offset (retention) a seek is reset to the first
                # record there is: exactly the answer for a hole at the front.
                auto_offset_reset="earliest",
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def first_offset(self, topic: str, partition: int, start: int) -> int | None:
        """The offset of the first record at or after ``start``; None if there is none yet.

        Raises ``TimeoutError`` when the broker does not answer within ``timeout_s``.
        """
        async with self._lock:
            consumer = await self._ensure_consumer()
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            if start >= end:
                return None
            consumer.seek(tp, start)
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                batches = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
                records = batches.get(tp)
                if records:
                    return int(records[0].offset)
                if await consumer.position(tp) >= end:
                    return None  # only control records (transaction markers) up to the end
            raise TimeoutError(f"{topic}/{partition}: no answer in {self.timeout_s}s")

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

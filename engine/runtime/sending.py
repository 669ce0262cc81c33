"""What the topology writes, and the one rule of how: records that go out together are
handed to the producer in one loop turn, and awaited together until durable.

Faust's ``topic.send`` yields to the event loop several times per record
(``maybe_start_producer`` is wrapped in mode's ``stampede``: three ``sleep(0)``), and the
local transport joins into one fsynced write only the sends of one loop turn
(``engine.runtime.transport.local.Producer``): so each record was a write of its own. A
batch of readings of N partitions cost N fsyncs before the ingest could acknowledge it
(the MQTT PUBACK), a burst of 100,000 late readings' dead letters about 5 minutes.
``hand_over`` gives the producer a list of records with no await between them: one
write on ``local://`` (aiokafka batches them on Kafka), and the caller still returns
only once every record is durable.

``Sending`` is a base class of ``Topology`` (``engine.runtime.topology``): producing
readings (``produce``), dead letters (``send_dead_letters``) and the durable hand-over
the topology's agents and timers use for alerts, watermarks and ticks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple

from engine.contracts.batch import ReadingBlock
from engine.contracts.dead_letters import REASON_HEADER, RECEIVED_AT_HEADER, SOURCE_HEADER
from engine.runtime.batching import Reading, StationPartitions, batches_by_partition
from engine.runtime.metrics import Metrics

__all__ = ["DeadLetter", "Outgoing", "Sending"]

log = logging.getLogger(__name__)

#: A dead letter: raw bytes, reason, source, and the log fields known (``station``,
#: ``partition``, ``offset``).
DeadLetter = tuple[bytes, str, str, dict[str, str | int]]


class Outgoing(NamedTuple):
    """A record to write: raw bytes to ``topic`` (its name), in ``partition`` or, if
    None, in the partition of ``key`` (Kafka's partitioner)."""

    topic: str
    value: bytes
    partition: int | None = None
    key: bytes | None = None
    headers: Mapping[str, bytes] | None = None


class Sending:
    """The writing side of ``Topology`` (one of its base classes); the topics and the
    app are set up by the topology, the rest by ``_init_sending``."""

    app: Any  # the Faust app
    telemetry: Any  # the ``<id>-telemetry`` topic
    dead_letter: Any  # the ``<id>-dead-letter`` topic
    partitions: int
    counters: Counter[str]
    metrics: Metrics

    def _init_sending(self) -> None:
        #: Station id -> its partition (``partition_for``), cached.
        self._partition_of = StationPartitions(self.partitions)
        #: Station id -> its kind, for counting readings (the gateway sets it from the
        #: registry, at start and on reload); a station not in it counts as ``unknown``.
        self.station_kinds: Mapping[str, str] = {}

    def partition_for(self, key: str) -> int:
        """Kafka's murmur2 partition of a key (a station id), the same on both transports
        (``StationPartitions``: cached per station)."""
        return self._partition_of(key)

    def producer(
        self, connector: str
    ) -> Callable[[Sequence[Reading | ReadingBlock]], Awaitable[None]]:
        """``produce`` for one connector (``mqtt``, ``field``, ``nbiot``): its label in
        ``/metrics``."""
        return functools.partial(self.produce, connector=connector)

    async def produce(
        self, readings: Sequence[Reading | ReadingBlock], *, connector: str = "other"
    ) -> None:
        """Produce readings as one batch per partition, all in one write; returns once
        all are durable (then the caller may acknowledge them).

        Every ingest path comes through here, so here they are timed and counted for
        ``/metrics`` (by ``connector`` and station kind, ``station_kinds``): once per
        batch and station, not per reading.
        """
        started = time.perf_counter()
        batches = batches_by_partition(readings, self.partition_for)
        name = self.telemetry.get_topic_name()
        await self.send_together([Outgoing(name, b.encode(), p) for p, b in batches.items()])
        self.counters["readings_produced"] += sum(len(b) for b in batches.values())
        self.metrics.append_seconds.labels(connector).observe(time.perf_counter() - started)
        self.metrics.count_readings(connector, batches.values(), self.station_kinds)

    async def send_dead_letter(
        self, raw: bytes, reason: str, source: str, *, quiet: bool = False, **fields: str | int
    ) -> None:
        """Keep rejected input with its reason; returns once it is durable. ``quiet``: no
        log line (a connector that logs a summary of its dead letters instead); ``fields``:
        the app's log fields known here (``station``, ``partition``, ``offset``)."""
        await self.send_dead_letters([(raw, reason, source, fields)], quiet=quiet)

    async def send_dead_letters(self, items: Sequence[DeadLetter], *, quiet: bool = False) -> None:
        """``send_dead_letter`` for many at once; returns once all are durable. They share
        one write (one fsync) on ``local://``."""
        await self.send_together(self._dead_letter_records(items))
        self._count_dead_letters(items, quiet=quiet)

    def _dead_letter_records(self, items: Sequence[DeadLetter]) -> list[Outgoing]:
        """The records of dead letters, keyed by their source."""
        name = self.dead_letter.get_topic_name()
        now = str(int(time.time() * 1000)).encode()
        return [
            Outgoing(
                name,
                raw,
                key=source.encode(),
                headers={
                    REASON_HEADER: reason.encode(),
                    SOURCE_HEADER: source.encode(),
                    RECEIVED_AT_HEADER: now,
                },
            )
            for raw, reason, source, _ in items
        ]

    def _count_dead_letters(self, items: Sequence[DeadLetter], *, quiet: bool) -> None:
        """Count (and unless ``quiet`` log) dead letters, once they are durable."""
        for _, reason, source, fields in items:
            self.counters["dead_letter"] += 1
            self.metrics.count_dead_letter(reason)
            if not quiet:
                extra = {"source": source, "reason": reason, **fields}
                log.warning("dead-letter from %s: %s", source, reason, extra=extra)

    async def hand_over(self, records: Sequence[Outgoing]) -> list[asyncio.Future[Any]]:
        """Give ``records`` to the producer, in order, with no await that yields between
        them: one write on ``local://``. Returns their futures, each resolving to its
        ``RecordMetadata`` once durable; a failed one is counted in ``/metrics``
        (``vigil_producer_send_errors_total``, what Faust's send counted). Raises what the
        producer raises on taking a record (Kafka: its buffer stayed full); the records
        before it are then with the producer."""
        if not records:
            return []  # no need of the producer (its start yields to the loop)
        producer = await self.app.maybe_start_producer()
        futures = []
        for topic, value, partition, key, headers in records:
            fut = await producer.send(
                topic, key, value, partition=partition, timestamp=None, headers=headers
            )
            fut.add_done_callback(functools.partial(self._count_failure, topic))
            futures.append(fut)
        return futures

    async def send_together(self, records: Sequence[Outgoing]) -> list[Any]:
        """``hand_over`` the records and wait until all are durable; their
        ``RecordMetadata``, in order. Raises the first failure."""
        return [await fut for fut in await self.hand_over(records)]

    def _count_failure(self, topic: str, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self.metrics.send_errors.labels(topic).inc()

"""Telemetry batches and dead letters produced straight to Kafka (no Faust app).

``vigil ingest`` and the load generators of the tests and benchmarks use this, so that
what they write is exactly what ``Topology.produce`` writes: one columnar batch
(``engine.contracts.batch``) per partition, the partition chosen by Kafka's murmur2 of the
station id. Every send uses ``acks=all`` with an idempotent producer; the coroutines
return only once the broker has acknowledged, which is what lets MQTT ingest
acknowledge its messages afterwards.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from engine.contracts.batch import ReadingBlock, TelemetryBatch
from engine.runtime.batching import (
    Reading,
    StationPartitions,
    batches_by_partition,
    murmur2_partition,
)
from engine.runtime.kafka.topics import TopicLayout

__all__ = ["TelemetryProducer", "partition_for"]


def partition_for(station: str, partitions: int) -> int:
    """Kafka's murmur2 partition of a station id (the same as ``Topology.partition_for``)."""
    return murmur2_partition(station, list(range(partitions)))


class TelemetryProducer:
    """Produces telemetry batches and dead letters of one app's topics."""

    def __init__(self, bootstrap: str, layout: TopicLayout, *, linger_ms: int = 5) -> None:
        self.layout = layout
        self.counters: Counter[str] = Counter()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            max_request_size=16 * 1024 * 1024,
            max_batch_size=4 * 1024 * 1024,
        )
        self.partition = StationPartitions(layout.partitions)

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def produce(self, readings: Sequence[Reading | ReadingBlock]) -> list[TelemetryBatch]:
        """Readings as one batch per partition; returns the batches once the broker
        acknowledged all (for counting: ``IngestMetrics.count_readings``)."""
        batches = batches_by_partition(readings, self.partition)  # column by column
        await self.produce_encoded({p: b.encode() for p, b in batches.items()})
        self.counters["readings_produced"] += sum(len(b) for b in batches.values())
        return list(batches.values())

    async def produce_encoded(self, batches: dict[int, bytes]) -> None:
        """Already encoded batches ``{partition: bytes}``; returns once all are acknowledged."""
        topic = self.layout.telemetry
        futures = [
            await self._producer.send(topic, value=value, partition=p)
            for p, value in batches.items()
        ]
        for fut in futures:
            await fut
        self.counters["batches_produced"] += len(batches)

    async def send_dead_letter(self, raw: bytes, reason: str, source: str) -> None:
        """Keep rejected input with its reason; returns once it is acknowledged."""
        await self._producer.send_and_wait(
            self.layout.dead_letter,
            value=raw,
            key=source.encode(),
            headers=[
                ("vigil-reason", reason.encode()),
                ("vigil-source", source.encode()),
                ("vigil-received-at", str(int(time.time() * 1000)).encode()),
            ],
        )
        self.counters["dead_letter"] += 1

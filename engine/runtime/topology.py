"""The Faust topology: telemetry -> per-partition kernels -> alerts -> dispatcher.

Topics (names prefixed by the app id, DESIGN.md): ``<id>-telemetry`` carries columnar
batches (raw bytes, ``engine.contracts.batch``), ``<id>-alerts`` alert events as JSON lines, the
events of a telemetry batch in records of up to 256 KB (``engine.contracts.alerts.pack_lines``)
in the alerts partition of the same number (a station, and so every series, stays in
one partition, so its transitions stay in order: one record per alert made each alert
pay Faust's per-record cost twice, and that, not the kernels, bounded a worker), and
``<id>-dead-letter`` the raw bytes of anything rejected, with the reason in the
``vigil-reason`` header; ``<id>-corroboration`` re-keys alerts by station group for the
rules that span stations (``engine.runtime.corroboration``).

The same topology runs on the embedded ``local://`` transport and on Kafka; only the
broker URL differs. The processors' state is checkpointed with the consumer
offsets and moves with partitions (``engine.runtime.partitions``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import faust
from aiokafka.partitioner import DefaultPartitioner

from connectors.sinks.base import Sink
from engine.contracts.alerts import (
    INGESTED_HEADER,
    WATERMARK_HEADER,
    AlertEvent,
    ingested_at,
    pack_lines,
    watermark_of,
)
from engine.contracts.batch import BatchBuilder, BatchDecodeError, ReadingBlock, TelemetryBatch
from engine.contracts.dead_letters import REASON_HEADER, RECEIVED_AT_HEADER, SOURCE_HEADER
from engine.contracts.ruleset import RuleSet
from engine.dispatch.delivery import Dispatcher
from engine.evaluation.processor import NO_TIME, PartitionProcessor
from engine.evaluation.warmup import warm_kernels
from engine.runtime.corroboration.stage import CorroborationStage
from engine.runtime.corroboration.wire import MARK_INTERVAL_S
from engine.runtime.kafka.checkpoints import CheckpointingTransport, CheckpointStore
from engine.runtime.kafka.topics import bootstrap_of
from engine.runtime.metrics import FaustSensor, Metrics
from engine.runtime.partitions import PartitionStates
from engine.runtime.ticks import TickWriter
from engine.runtime.transport.local import Transport as LocalTransport
from engine.runtime.watermarks import MarkThrottle

__all__ = ["Reading", "Topology", "murmur2_partition"]

log = logging.getLogger(__name__)

#: station, metric, ts_ms, value[, quality (engine.contracts.batch.Quality)]
Reading = tuple[str, str, int, float] | tuple[str, str, int, float, int]

_partitioner = DefaultPartitioner()
#: How many stations' partitions ``Topology.partition_for`` keeps (a registry is far
#: smaller; the bound is for ids that keep changing, e.g. from a misconfigured device).
PARTITION_CACHE_MAX = 100_000


def murmur2_partition(key: str, partitions: list[int]) -> int:
    """Kafka's murmur2 partition of ``key`` among ``partitions`` (``[0, 1, ..., n-1]``)."""
    return int(_partitioner(key.encode(), partitions, partitions))


class _App(faust.App):
    """``faust.App`` with hooks run as it begins to stop, while its agents still run."""

    before_stop: Sequence[Callable[[], Awaitable[None]]] = ()

    async def on_stop(self) -> None:
        for hook in self.before_stop:
            await hook()
        await super().on_stop()


class Topology(PartitionStates, TickWriter):
    """Builds the Faust app, its topics and agents, around one rule set.

    The partitions' processors and their checkpoints are in ``PartitionStates``
    (``engine.runtime.partitions``), the ticks in ``TickWriter`` (``engine.runtime.ticks``).
    """

    def __init__(
        self,
        *,
        app_id: str,
        broker: str,
        partitions: int,
        ruleset: RuleSet,
        sinks: Sequence[Sink],
        data_dir: Path,
        lateness_ms: int = 60_000,
        web_port: int | None = None,
        replication: int = 1,
        tick_interval_s: float | None = None,
        corroboration_idle_s: float = 30.0,
    ) -> None:
        """``tick_interval_s``: how often the wall clock is written into each telemetry
        partition this worker owns, so that a partition that gets no readings still
        finds its silent sensors (``_tick``); None writes none."""
        warm_kernels()  # before any traffic: a cold numba compile would block the loop
        self.partitions = partitions
        # Once, not per call: partition_for runs for every alert routed to corroboration.
        self._every_partition = list(range(partitions))
        #: Station id -> its partition (``partition_for``).
        self._partition_of: dict[str, int] = {}
        #: Station id -> its kind, for counting readings (the gateway sets it from the
        #: registry, at start and on reload); a station not in it counts as ``unknown``.
        self.station_kinds: Mapping[str, str] = {}
        self.ruleset = ruleset
        self.lateness_ms = lateness_ms
        #: Wall seconds after which a partition whose watermark stands still no longer
        #: holds the basin rules back (``engine.evaluation.corroboration_buffer``).
        self.corroboration_idle_s = corroboration_idle_s
        self.counters: Counter[str] = Counter()
        #: Prometheus metrics, served on the web port (``engine.runtime.services.observe``).
        self.metrics = Metrics()
        self.app = _App(
            app_id,
            broker=broker,
            store="memory://",
            datadir=str(data_dir / "faust"),
            topic_partitions=partitions,
            broker_commit_interval=1.0,
            web_enabled=web_port is not None,
            web_port=web_port or 6066,
            autodiscover=False,
            # Batches, not records: a few large records per second, never a flood.
            stream_buffer_maxsize=64,
            topic_replication_factor=replication,
            producer_acks=-1,
            # Telemetry batches are ~0.5 MB: at Faust's default (1 MiB a partition) a
            # fetch brought two per partition and the worker waited on the next one.
            consumer_max_fetch_size=8 * 1024 * 1024,
        )
        self.app.sensors.add(FaustSensor(self.metrics))
        self.checkpoint_store: CheckpointStore | None = None
        if broker.startswith("kafka://"):
            # Before anything touches app.transport (declaring topics does).
            transport = CheckpointingTransport(self.app.conf.broker_consumer, self.app)
            transport.checkpointer = self._kafka_checkpoint
            self.app.transport = transport
            self.checkpoint_store = CheckpointStore(bootstrap_of(broker), f"{app_id}-checkpoints")
            self.app.on_partitions_revoked.connect(self._on_partitions_revoked)
        #: Telemetry partition -> next_offset of its latest durable Kafka checkpoint.
        self._checkpointed: dict[int, int] = {}
        self._restore_lock = asyncio.Lock()
        #: Bumped at each revocation: a restore begun before it is stale.
        self._generation = 0
        #: Partition -> the offset its consumer was last rewound to (``_in_order``).
        self._rewound_to: dict[int, int] = {}
        #: Partitions whose latest batch is applied but whose alerts are not all sent:
        #: their state must not be checkpointed now, or a new owner would skip the batch
        #: and its unsent alerts would be lost.
        self._busy: set[int] = set()
        #: When each partition's watermark goes down the alerts topic (basin rules).
        self._marks = MarkThrottle(MARK_INTERVAL_S)
        self.telemetry = self.app.topic(
            f"{app_id}-telemetry",
            key_serializer="raw",
            value_serializer="raw",
            partitions=partitions,
        )
        self.alerts = self.app.topic(
            f"{app_id}-alerts",
            key_serializer="raw",
            value_serializer="raw",
            partitions=partitions,
        )
        self.dead_letter = self.app.topic(
            f"{app_id}-dead-letter",
            key_serializer="raw",
            value_serializer="raw",
            partitions=1,
        )
        self.processors: dict[int, PartitionProcessor] = {}
        self.dispatcher = Dispatcher(sinks)
        #: Called with every record's alert events, in offset order, before its offset
        #: may be committed (the routing dispatcher, ``engine.runtime.dispatch``).
        self.alert_listeners: list[Callable[[list[AlertEvent]], None]] = []
        #: Awaited with every record's alert events before its offset may be committed
        #: (the Kafka worker's forward to the elected dispatcher, ``engine.runtime.dispatch``).
        self.alert_senders: list[Callable[[list[AlertEvent]], Awaitable[None]]] = []
        #: Called with every telemetry batch after the kernels evaluated it, on the event
        #: loop; must be quick and must not raise (the duty room's station board).
        self.batch_listeners: list[Callable[[TelemetryBatch], None]] = []
        self.app.agent(self.telemetry, name="evaluate", isolated_partitions=True)(self._evaluate)
        self.app.agent(self.alerts, name="dispatch")(self._dispatch)
        self.corroboration = CorroborationStage(self)
        self.app.timer(MARK_INTERVAL_S)(self._send_due_marks)
        if isinstance(self.app.transport, CheckpointingTransport):
            ours = (self.telemetry, self.alerts, self.corroboration.topic)
            self.app.transport.contiguous_topics = frozenset(t.get_topic_name() for t in ours)
        self._declare_local_topics()
        self._checkpoint_registered = False
        self.tick_interval_s = tick_interval_s
        #: Telemetry partition -> offset of the latest tick written to it.
        self._ticks_written: dict[int, int] = {}
        self._tick_lock = asyncio.Lock()
        self._ticking = tick_interval_s is not None
        self.app.before_stop = [self._stop_ticks]
        if tick_interval_s is not None:
            self.app.timer(tick_interval_s)(self._tick)

    def _declare_local_topics(self) -> None:
        # Create the topics with their partition counts before anything produces: a
        # first send to an unknown topic would create it with the app's default count.
        transport = self.app.transport
        if isinstance(transport, LocalTransport):
            topics = (self.telemetry, self.alerts, self.dead_letter, self.corroboration.topic)
            for topic in topics:
                transport.create_topic(topic.get_topic_name(), topic.partitions or 1)

    # ---- producing -------------------------------------------------------------------------

    def partition_for(self, key: str) -> int:
        """Kafka's murmur2 partition of a key (a station id), the same on both transports;
        computed once per station (murmur2 in Python per reading was a third of ingest's
        CPU), in a cache that starts over past ``PARTITION_CACHE_MAX`` stations."""
        p = self._partition_of.get(key)
        if p is None:
            if len(self._partition_of) >= PARTITION_CACHE_MAX:
                self._partition_of.clear()
            p = self._partition_of[key] = murmur2_partition(key, self._every_partition)
        return p

    def producer(
        self, connector: str
    ) -> Callable[[Sequence[Reading | ReadingBlock]], Awaitable[None]]:
        """``produce`` for one connector (``mqtt``, ``field``, ``nbiot``): its label in
        ``/metrics``."""
        return functools.partial(self.produce, connector=connector)

    async def produce(
        self, readings: Sequence[Reading | ReadingBlock], *, connector: str = "other"
    ) -> None:
        """Produce readings as one batch per partition; returns once all are durable.

        Every ingest path comes through here, so here they are timed and counted for
        ``/metrics`` (by ``connector`` and station kind, ``station_kinds``): once per
        batch and station, not per reading.
        """
        started = time.perf_counter()
        builders: dict[int, BatchBuilder] = {}
        of_station: dict[str, BatchBuilder] = {}  # a station's partition's builder
        for reading in readings:
            station = reading.station if isinstance(reading, ReadingBlock) else reading[0]
            builder = of_station.get(station)
            if builder is None:
                p = self.partition_for(station)
                builder = builders.get(p)
                if builder is None:
                    builder = builders[p] = BatchBuilder()
                of_station[station] = builder
            if isinstance(reading, ReadingBlock):
                builder.add_block(reading)
            else:
                builder.add(*reading)
        batches = {p: b.build() for p, b in builders.items()}
        futures = [
            await self.telemetry.send(value=batch.encode(), partition=p)
            for p, batch in batches.items()
        ]
        for fut in futures:
            await fut
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

    async def send_dead_letters(
        self, items: Sequence[tuple[bytes, str, str, dict[str, str | int]]], *, quiet: bool = False
    ) -> None:
        """``send_dead_letter`` for many (raw, reason, source, fields) at once; returns once
        all are durable. They share one write (one fsync) on ``local://``."""
        now = str(int(time.time() * 1000)).encode()
        await self._send_together(
            self.dead_letter,
            [
                (
                    source.encode(),
                    raw,
                    {
                        REASON_HEADER: reason.encode(),
                        SOURCE_HEADER: source.encode(),
                        RECEIVED_AT_HEADER: now,
                    },
                )
                for raw, reason, source, _ in items
            ],
        )
        for _, reason, source, fields in items:
            self.counters["dead_letter"] += 1
            self.metrics.count_dead_letter(reason)
            if not quiet:
                extra = {"source": source, "reason": reason, **fields}
                log.warning("dead-letter from %s: %s", source, reason, extra=extra)

    async def _send_together(
        self, topic: Any, records: Sequence[tuple[bytes | None, bytes, dict[str, bytes]]]
    ) -> None:
        """Send (key, value, headers) records to ``topic`` (raw serializers, partition by
        key); returns once all are durable.

        Through the producer, not ``topic.send``: Faust's send yields to the event loop
        (``maybe_start_producer`` is wrapped in mode's ``stampede``, three ``sleep(0)``),
        and the local transport's group commit joins the sends of one loop turn, so each
        record was written and fsynced alone: a burst of 100,000 late readings took about
        5 minutes, and its dead letters trickled in. Handed over in one turn, they share
        one write on ``local://`` (aiokafka batches them on Kafka).
        """
        producer = await self.app.maybe_start_producer()
        name = topic.get_topic_name()
        futures = [
            await producer.send(name, key, value, partition=None, timestamp=None, headers=headers)
            for key, value, headers in records
        ]
        for fut in futures:
            try:
                await fut
            except Exception:  # what Faust's own send would count (FaustSensor)
                self.metrics.send_errors.labels(name).inc()
                raise

    # ---- agents ----------------------------------------------------------------------------

    async def _evaluate(self, stream: Any) -> None:
        self._register_checkpoints()
        async for event in stream.events():
            message = event.message
            try:
                batch = TelemetryBatch.decode(event.value)
            except BatchDecodeError as exc:
                await self.send_dead_letter(
                    event.value or b"",
                    f"bad telemetry batch: {exc}",
                    f"{message.topic}/{message.partition}@{message.offset}",
                )
                continue
            proc = await self._partition_processor(message.partition)
            if not await self._in_order(message, proc):
                continue
            self._busy.add(message.partition)
            try:
                with self.metrics.batch_seconds.time():
                    await self._apply(proc, batch, message)
            except BaseException:
                # Interrupted mid-batch (revocation, shutdown): this state is ahead of
                # its alerts, so it must never be checkpointed; the next owner (or this
                # worker, later) restores the last checkpoint and replays the batch.
                self.processors.pop(message.partition, None)
                raise
            finally:
                self._busy.discard(message.partition)

    async def _apply(self, proc: PartitionProcessor, batch: TelemetryBatch, message: Any) -> None:
        """Evaluate the batch of telemetry record ``message``; returns once its alerts (to
        the alerts partition of the same number) and dead letters are durable. The
        record's append time rides on the alerts (``INGESTED_HEADER``)."""
        partition, offset = message.partition, message.offset
        with self.metrics.kernel_seconds.time():
            alerts = proc.process(batch, offset)
        for listener in self.batch_listeners:
            listener(batch)
        self.counters["readings_evaluated"] += len(batch)
        if len(batch):  # a tick has no readings: not a batch size
            self.metrics.readings_evaluated.inc(len(batch))
            self.metrics.batch_readings.observe(len(batch))
        if proc.rejected:
            await self.send_dead_letters(
                [
                    (
                        json.dumps(
                            {"station": station, "metric": metric, "ts": ts, "value": value}
                        ).encode(),
                        reason,
                        f"{station}/{metric}",
                        {"station": station, "partition": partition, "offset": offset},
                    )
                    for station, metric, ts, value, reason in proc.rejected
                ]
            )
        proc.rejected.clear()
        records = pack_lines(alert.to_json() for alert in alerts)
        # The partition's watermark rides on the batch's last record (engine.runtime.watermarks).
        watermark = proc.watermark
        mark = None
        if watermark != NO_TIME and self.ruleset.corroboration:  # else no one waits for it
            mark = self._marks.to_send(partition, watermark, piggyback=bool(records))
        if mark is not None and not records:
            records = [b""]  # the watermark alone
        ingested = (
            {INGESTED_HEADER: str(int(message.timestamp * 1000)).encode()}
            if message.timestamp
            else {}
        )
        futures = [
            await self.alerts.send(
                value=record,
                partition=partition,
                headers={**ingested, **(_mark_header(mark) or {})}
                if i == len(records) - 1
                else ingested,
            )
            for i, record in enumerate(records)
        ]
        if mark is not None:
            self._marks.sent(partition, mark)
        elif watermark != NO_TIME and self.ruleset.corroboration:
            self._marks.hold(partition, watermark)
        for fut in futures:
            await fut  # durable before the state that caused it can be committed

    async def _send_due_marks(self) -> None:
        """The watermarks the throttle held back, so that the last of a quiet partition
        reaches the basin rules too (every ``MARK_INTERVAL_S``)."""
        for partition, mark in self._marks.due().items():
            if partition not in self.processors:
                self._marks.forget(partition)  # revoked (or interrupted) meanwhile
                continue
            try:
                await self.alerts.send(value=b"", partition=partition, headers=_mark_header(mark))
            except Exception as exc:  # e.g. the broker restarting: still due, next time
                log.warning("watermark send failed (%r), will send again", exc)
                return
            self._marks.sent(partition, mark)

    async def _dispatch(self, stream: Any) -> None:
        async for record in stream.events():
            events = []
            for line in (record.value or b"").split(b"\n"):
                if not line:
                    continue
                try:
                    events.append(AlertEvent.from_json(line))
                except (ValueError, TypeError) as exc:  # not an alert event: keep it aside
                    message = record.message
                    where = f"{message.topic}/{message.partition}@{message.offset}"
                    await self.send_dead_letter(line, f"bad alert event: {exc}", where)
            fresh = await self.dispatcher.dispatch_many(events)
            self._observe_alerts(fresh, record.headers)
            for listener in self.alert_listeners:
                listener(events)  # all of them: each listener drops what it has
            if events:
                for send in self.alert_senders:
                    await send(events)
            mark = watermark_of(record.headers)
            await self.corroboration.route(events, record.message.partition, mark)

    def _observe_alerts(self, events: list[AlertEvent], headers: Any) -> None:
        """Count the events delivered (not the repeats the dispatcher dropped) and their
        latency since ingest (the header, when the record has one: gateway-level alerts
        have none)."""
        if not events:
            return
        self.metrics.count_alerts(events)
        at = ingested_at(headers)
        if at is not None:
            self.metrics.ingest_to_alert.observe(max(0.0, time.time() - at / 1000))

    def swap_rules(self, ruleset: RuleSet) -> None:
        """Install new rules; each partition picks them up before its next batch."""
        self.ruleset = ruleset


def _mark_header(mark: int | None) -> dict[str, bytes] | None:
    return None if mark is None else {WATERMARK_HEADER: str(mark).encode()}

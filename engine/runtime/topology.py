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
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import faust

from connectors.sinks.base import Sink
from engine.contracts.alerts import (
    INGESTED_HEADER,
    WATERMARK_HEADER,
    AlertEvent,
    ingested_at,
    pack_lines,
    unpack_events,
    watermark_of,
)
from engine.contracts.batch import BatchDecodeError, TelemetryBatch
from engine.contracts.ruleset import RuleSet
from engine.dispatch.delivery import Dispatcher
from engine.evaluation.processor import NO_TIME, PartitionProcessor
from engine.evaluation.warmup import warm_kernels
from engine.runtime.batching import Reading, murmur2_partition
from engine.runtime.corroboration.stage import CorroborationStage
from engine.runtime.corroboration.wire import MARK_INTERVAL_S
from engine.runtime.kafka.checkpoints import CheckpointingTransport, CheckpointStore
from engine.runtime.kafka.topics import bootstrap_of
from engine.runtime.metrics import FaustSensor, Metrics
from engine.runtime.partitions import PartitionStates
from engine.runtime.sending import Outgoing, Sending
from engine.runtime.stopping import arm_stop_deadline
from engine.runtime.ticks import TickWriter
from engine.runtime.transport.local import Transport as LocalTransport
from engine.runtime.watermarks import MarkThrottle

__all__ = ["Reading", "Topology", "murmur2_partition"]

log = logging.getLogger(__name__)

#: A failing batch listener is logged at most this often (seconds), not per batch.
LISTENER_LOG_EVERY_S = 60.0


class _App(faust.App):
    """``faust.App`` with hooks run as it begins to stop, while its agents still run."""

    before_stop: Sequence[Callable[[], Awaitable[None]]] = ()

    async def on_stop(self) -> None:
        arm_stop_deadline(asyncio.get_running_loop())
        for hook in self.before_stop:
            await hook()
        await super().on_stop()


class Topology(Sending, PartitionStates, TickWriter):
    """Builds the Faust app, its topics and agents, around one rule set.

    What it writes, and how (records that go out together in one write), is in
    ``Sending`` (``engine.runtime.sending``: ``produce``, ``send_dead_letters``), the
    partitions' processors and their checkpoints in ``PartitionStates``
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
        corroboration_history_s: float = 86_400.0,
    ) -> None:
        """``tick_interval_s``: how often the wall clock is written into each telemetry
        partition this worker owns, so that a partition that gets no readings still
        finds its silent sensors (``_tick``); None writes none."""
        warm_kernels()  # before any traffic: a cold numba compile would block the loop
        self.partitions = partitions
        self._init_sending()
        self.ruleset = ruleset
        self.lateness_ms = lateness_ms
        #: Wall seconds after which a partition whose watermark stands still no longer
        #: holds the basin rules back (``engine.evaluation.corroboration_buffer``).
        self.corroboration_idle_s = corroboration_idle_s
        #: Event-time seconds of each basin group's history, within which a late event
        #: (a gauge's backlog) is put in its place (``engine.evaluation.corroboration``).
        self.corroboration_history_s = corroboration_history_s
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
        #: loop; must be quick (the duty room's station board). Display only: what one
        #: raises is logged (``LISTENER_LOG_EVERY_S``) and the batch goes on.
        self.batch_listeners: list[Callable[[TelemetryBatch], None]] = []
        #: Listener -> monotonic time its failure was last logged.
        self._listener_logged: dict[Callable[[TelemetryBatch], None], float] = {}
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

    def _tell_listeners(self, batch: TelemetryBatch) -> None:
        """Give ``batch`` to each batch listener. One that raises must not stop the
        batch: raised here, it would stop the agent, and the replay would meet it again
        (a crash loop, and no alerts). Logged at most once per ``LISTENER_LOG_EVERY_S``
        per listener."""
        for listener in self.batch_listeners:
            try:
                listener(batch)
            except Exception:
                now = time.monotonic()
                last = self._listener_logged.get(listener)
                if last is None or now - last >= LISTENER_LOG_EVERY_S:
                    self._listener_logged[listener] = now
                    log.exception("batch listener %r failed (the batch goes on)", listener)

    async def _apply(self, proc: PartitionProcessor, batch: TelemetryBatch, message: Any) -> None:
        """Evaluate the batch of telemetry record ``message``; returns once its alerts (to
        the alerts partition of the same number) and dead letters are durable. The
        record's append time rides on the alerts (``INGESTED_HEADER``)."""
        partition, offset = message.partition, message.offset
        with self.metrics.kernel_seconds.time():
            alerts = proc.process(batch, offset)
        self._tell_listeners(batch)
        self.counters["readings_evaluated"] += len(batch)
        if len(batch):  # a tick has no readings: not a batch size
            self.metrics.readings_evaluated.inc(len(batch))
            self.metrics.batch_readings.observe(len(batch))
        dead = [
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
        name = self.alerts.get_topic_name()
        last = len(records) - 1
        # The dead letters and the alerts in one write (``engine.runtime.sending``).
        futures = await self.hand_over(
            [
                *self._dead_letter_records(dead),
                *(
                    Outgoing(name, record, partition, headers=_headers(ingested, mark, i == last))
                    for i, record in enumerate(records)
                ),
            ]
        )
        if mark is not None:
            self._marks.sent(partition, mark)
        elif watermark != NO_TIME and self.ruleset.corroboration:
            self._marks.hold(partition, watermark)
        for fut in futures:
            await fut  # durable before the state that caused it can be committed
        self._count_dead_letters(dead, quiet=False)

    async def _send_due_marks(self) -> None:
        """The watermarks the throttle held back, so that the last of a quiet partition
        reaches the basin rules too (every ``MARK_INTERVAL_S``), in one write."""
        due = {}
        for partition, mark in self._marks.due().items():
            if partition in self.processors:
                due[partition] = mark
            else:
                self._marks.forget(partition)  # revoked (or interrupted) meanwhile
        if not due:
            return
        name = self.alerts.get_topic_name()
        try:
            await self.hand_over(
                [
                    Outgoing(name, b"", p, headers=_headers({}, mark, True))
                    for p, mark in due.items()
                ]
            )
        except Exception as exc:  # e.g. the broker restarting: still due, next time
            log.warning("watermark send failed (%r), will send again", exc)
            return
        for partition, mark in due.items():
            self._marks.sent(partition, mark)

    async def _dispatch(self, stream: Any) -> None:
        async for record in stream.events():
            bad: list[tuple[bytes, Exception]] = []  # not alert events: kept aside
            events = unpack_events(record.value or b"", bad)
            for line, exc in bad:
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


def _headers(ingested: dict[str, bytes], mark: int | None, last: bool) -> dict[str, bytes]:
    """An alerts record's headers: its telemetry record's append time, and on the last
    record of a batch the partition's watermark, if one is sent."""
    if mark is None or not last:
        return ingested
    return {**ingested, WATERMARK_HEADER: str(mark).encode()}

"""A Kafka worker's station board, read back from the telemetry topic when partitions
are assigned to it (the gateway's read-back, ``board.py``, on Kafka).

A worker's board is fed by the telemetry batches it evaluates (``Topology.batch_listeners``),
so after a restart -- or when a rebalance gives it partitions another worker evaluated --
its stations showed no reading and no sparkline until new readings came. When Faust
assigns it telemetry partitions it did not hold, ``BoardReadBack`` reads back those
partitions' records that the app's group has committed, appended (Kafka's record
timestamp: the producer's wall clock) since ``StationBoard.read_back_from`` -- the trace's
span and an hour more, as on the gateway; the topology's replay from the committed
offsets feeds the rest, as it fed the board before.

Which partitions: those assigned to this worker, not all. Each worker's board holds the
stations it evaluates; the page's station list merges every worker's board
(``board_cluster``). Reading the others back too would show their last values of the
restart frozen, soon not the last any more, as if the stations had gone silent.

Not in the worker's way: the read-back runs as a task beside the topology (which starts
processing at once), into a board of its own, in pages of records merged (NumPy per
reading, Python per sensor and bucket: ~2 s of one core for 10,000 stations' six hours,
spread over the event loop's turns); that board is then merged into the live one as the
earlier readings (``StationBoard.take_earlier``), one synchronous step. The result is
the board fed the read-back's readings and then the live ones. Read-backs run one at a
time. One that meets broker errors (the cluster coming back) is tried again twice, then
logged: the board is display only, and new readings fill it in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from engine.contracts.batch import TelemetryBatch
from engine.runtime.dispatch.board import READ_BACK_PAGE, StationBoard, readings_of

__all__ = ["BoardReadBack", "kafka_read_back"]

log = logging.getLogger(__name__)

#: Largest fetch of one partition (bytes): telemetry batches are ~0.5 MB, as the
#: topology's consumer fetches them (``Topology``: ``consumer_max_fetch_size``).
_FETCH_BYTES = 8 * 1024 * 1024
#: Seconds a fetch may bring nothing before the read-back of a partition gives up.
_FETCH_TIMEOUT_S = 30.0
#: Tries of a read-back that meets broker errors, and the seconds between two.
_ATTEMPTS = 3
_RETRY_S = 2.0


async def kafka_read_back(
    bootstrap: str,
    topic: str,
    group: str,
    partitions: Iterable[int],
    since_ms: int,
    page: int = READ_BACK_PAGE,
) -> AsyncIterator[TelemetryBatch]:
    """The telemetry of ``topic``'s ``partitions`` that consumer group ``group`` has
    committed, from the first record whose timestamp is ``since_ms`` (epoch ms) or later:
    per partition, in offset order, the readings of up to ``page`` records merged into
    one batch (``board.readings_of``). A partition never committed is skipped (the
    topology replays all of it), as on the gateway (``board.read_back``)."""
    tps = [TopicPartition(topic, p) for p in sorted(set(partitions))]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
    finally:
        await admin.close()
    ends = {tp: c.offset for tp, c in committed.items() if c is not None and c.offset > 0}
    if not ends:
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=_FETCH_BYTES,
        fetch_max_bytes=_FETCH_BYTES,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        starts = await consumer.offsets_for_times({tp: since_ms for tp in ends})
        for tp in sorted(ends, key=lambda tp: tp.partition):
            start, end = starts.get(tp), ends[tp]
            if start is None or start.offset >= end:  # nothing appended since, or uncommitted
                continue
            consumer.assign([tp])
            consumer.seek(tp, start.offset)
            position = start.offset
            while position < end:
                fetched = await consumer.getmany(
                    tp, timeout_ms=int(_FETCH_TIMEOUT_S * 1000), max_records=page
                )
                records = fetched.get(tp, [])
                if not records:
                    log.warning(
                        "station board: read-back of %s stopped at offset %d of %d: "
                        "nothing fetched in %.0f s", tp, position, end, _FETCH_TIMEOUT_S,
                    )  # fmt: skip
                    break
                position = records[-1].offset + 1
                merged = readings_of(r.value for r in records if r.offset < end)
                if len(merged):
                    yield merged
    finally:
        await consumer.stop()


class BoardReadBack:
    """Reads back ``board`` when Faust assigns this worker telemetry partitions it did not
    hold before (module docstring). ``install`` hooks it into the Faust app."""

    def __init__(self, board: StationBoard, bootstrap: str, topic: str, group: str) -> None:
        self.board = board
        self.bootstrap = bootstrap
        self.topic = topic
        #: The Faust app's consumer group: its committed offsets end the read-back.
        self.group = group
        #: Telemetry partitions of the latest assignment.
        self._held: set[int] = set()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[int]] = set()

    def install(self, app: Any) -> None:
        app.on_partitions_assigned.connect(self._assigned)

        async def stop(app: Any, **kwargs: Any) -> None:
            await self.stop()

        app.on_before_shutdown.connect(stop)

    async def _assigned(self, app: Any, assigned: set[Any], **kwargs: Any) -> None:
        """Faust's signal, with the whole new assignment: start reading back the telemetry
        partitions new in it. Returns at once: a rebalance must not wait for it."""
        held = {tp.partition for tp in assigned if tp.topic == self.topic}
        new, self._held = held - self._held, held
        if new:
            task = asyncio.create_task(self._read_back(new))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    async def _read_back(self, partitions: set[int]) -> int:
        """``read_back``, tried again a few times while the broker answers with errors (a
        worker often starts as the cluster comes back); what a failed try read is dropped."""
        for attempt in range(1, _ATTEMPTS):
            try:
                return await self.read_back(partitions)
            except KafkaError as exc:
                log.warning("station board: read-back failed (try %d): %r", attempt, exc)
            await asyncio.sleep(_RETRY_S)
        return await self.read_back(partitions)

    def _done(self, task: asyncio.Task[int]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error(
                "station board: read-back failed; new readings fill the board in", exc_info=exc
            )

    async def read_back(self, partitions: Iterable[int], now_ms: int | None = None) -> int:
        """Read back ``partitions`` as of wall time ``now_ms`` (epoch ms, default now) into
        the board; returns the number of readings taken."""
        partitions = sorted(set(partitions))
        async with self._lock:
            started = time.monotonic()
            since = self.board.read_back_from(int(time.time() * 1000) if now_ms is None else now_ms)
            earlier = StationBoard(self.board.bucket_ms, self.board.points)
            taken = 0
            async for batch in kafka_read_back(
                self.bootstrap, self.topic, self.group, partitions, since
            ):
                earlier.observe(batch)
                taken += len(batch)
            self.board.take_earlier(earlier)
            log.info(
                "station board: %d readings of partitions %s read back in %.1f s",
                taken, partitions, time.monotonic() - started,
            )  # fmt: skip
            return taken

    async def stop(self) -> None:
        """Cancel the read-backs under way (the worker stops)."""
        tasks, self._tasks = set(self._tasks), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # logged by ``_done``
                await task

"""The wall clock written into the telemetry partitions, so that silence is found.

A partition that gets no readings still has its silent sensors found: every
``tick_interval_s`` the topology writes a tick (``engine.contracts.batch.Tick``) into each
telemetry partition this worker owns, evaluated in offset order with the readings
(``PartitionProcessor.on_tick``). A clean stop writes no more ticks and lets what was
written be applied first: on Kafka every fenced partition it owns, to the end of its log
(``FencedConsumer.drained``: a tick's evaluation writes alerts, their watermarks and the
corroboration records they route, and a stop that left those to the next owner ended
with partitions a record short of their end); on the embedded log, its ticks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from engine.contracts.batch import TelemetryBatch, Tick
from engine.evaluation.processor import PartitionProcessor
from engine.runtime.kafka.consumer import FencedConsumer
from engine.runtime.sending import Outgoing

__all__ = ["DRAIN_LIMIT_S", "DRAIN_S", "TickWriter"]

log = logging.getLogger(__name__)

#: How long a clean stop waits for what it wrote to be applied (seconds): on Kafka,
#: seconds without progress (``FencedConsumer.drained``)...
DRAIN_S = 5.0
#: ...and on Kafka at most this long in all, a rebalance under way included (seconds).
DRAIN_LIMIT_S = 20.0


class TickWriter:
    """The ticks of ``Topology`` (one of its base classes); state set up by the topology."""

    app: Any  # the Faust app
    telemetry: Any  # the ``<id>-telemetry`` topic
    processors: dict[int, PartitionProcessor]
    counters: Counter[str]
    tick_interval_s: float | None
    #: Telemetry partition -> offset of the latest tick written to it.
    _ticks_written: dict[int, int]
    _tick_lock: asyncio.Lock
    _ticking: bool
    #: ``Sending.hand_over``: records to the producer in one loop turn, their futures.
    hand_over: Callable[[Sequence[Outgoing]], Awaitable[list[asyncio.Future[Any]]]]

    async def _tick(self) -> None:
        """Write the wall clock, as a tick (``engine.contracts.batch.Tick``), into every telemetry
        partition this worker owns: evaluated in offset order with the readings, it
        lets a partition's processor find silent sensors when no reading comes
        (``PartitionProcessor.on_tick``); the ticks of all the partitions in one write.
        A tick that cannot be written is logged; the next one, an interval later, takes
        its place."""
        assert self.tick_interval_s is not None
        async with self._tick_lock:
            if not self._ticking or self.app.should_stop:
                return
            mine = sorted(self._owned_telemetry())
            tick = Tick(int(time.time() * 1000), int(self.tick_interval_s * 1000))
            record = TelemetryBatch.of_tick(tick).encode()
            name = self.telemetry.get_topic_name()
            try:
                # Bounded: a broker that does not answer must not hold a stop back.
                async with asyncio.timeout(max(1.0, self.tick_interval_s)):
                    futures = await self.hand_over([Outgoing(name, record, p) for p in mine])
                    for p, fut in zip(mine, futures, strict=True):
                        self._ticks_written[p] = (await fut).offset
            except Exception as exc:  # the broker away: silence waits for the next tick
                self.counters["ticks_failed"] += 1
                log.warning("tick not written: %r", exc)
                return
            self.counters["ticks_written"] += len(mine)

    def _owned_telemetry(self) -> set[int]:
        topic = self.telemetry.get_topic_name()
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}

    async def _stop_ticks(self) -> None:
        """As the app stops: write no more ticks, and let what was written be applied
        before the consumer stops, so that a clean stop commits to the end of the log."""
        async with self._tick_lock:
            self._ticking = False
        consumer = self.app.consumer
        if isinstance(consumer, FencedConsumer):
            # The app's timers (ticks, watermarks, the corroboration stage's) no longer
            # fire once it stops: what remains to apply is what they wrote before.
            behind = await consumer.drained(DRAIN_S, DRAIN_LIMIT_S)
            if behind:
                log.info("stopping with partitions not processed to the end: %s", behind)
            return
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            owned = self._owned_telemetry()
            pending = [
                p
                for p, offset in self._ticks_written.items()
                if p in owned
                and (p not in self.processors or self.processors[p].next_offset <= offset)
            ]
            if not pending:
                return
            await asyncio.sleep(0.02)  # a few batches at most: the agents are running
        log.info("stopping with ticks not yet evaluated in partitions %s", pending)

"""Faust's Kafka consumer, made to deliver Vigil's topics strictly in offset order.

After a rebalance Faust re-positions every partition at its committed offset, yet now
and then records from the old, further-on positions still reach the stream first (a
fetch answered across the rebalance by aiokafka's consumer thread, stamped with the new
generation). Faust then takes the offsets in between for a gap in the log: it commits
past them and drops them when they are re-fetched, because they are below its read
offset. For a partition this worker keeps through the rebalance, that lost alerts
before the dispatcher saw them and batches before the kernels did
(``tests/integration/test_kafka_failover.py`` caught both).

``FencedConsumer`` keeps, for each partition of the topics it is told are contiguous,
the offset it must deliver next (the bookkeeping is ``OffsetFence``, in
``engine.runtime.kafka.fence``): the committed offset after each seek, then one past
each record delivered; a partition never committed starts at the start of the log, as
the group reads it (auto_offset_reset "earliest"). Until Faust has positioned a newly
assigned partition, its records are not delivered at all (some arrive before that);
those dropped while the seek was under way may have come from the committed offset
itself, so their partition is sought there once more. A record beyond the expected
offset is not delivered either; the partition is rewound to the expected offset
instead, and the records in between are fetched first. Should the first record after
such a rewind still lie beyond (the offsets in between are gone from the log:
retention), it is delivered and the hole is logged.

A record the fence lets through has not yet reached the stream: Faust's fetcher then
hands it to the topic's callback under ``wait_first(callback(msg), suspend_flow.wait())``,
and a flow suspended meanwhile (``stop_flow()``: a rebalance, around Faust's
``perform_seek()``) cancels that delivery and marks the record read all the same.
Nothing would fetch it again, and since it is never acknowledged, its partition's
commit stays behind it for good (``_new_offset``) while the records after it are
processed: seen as a corroboration partition committed at 130 of 261, one record's
group events never applied. So the fence learns of each record whether its delivery
completed; one that did not is given back (``undelivered``) and its partition sought
back to it, so it is fetched and delivered again. A record may
then reach the stream twice (a put into a full queue that outlived the cancel): every
agent on these topics takes a repeat as a no-op (the processor skips batches below its
``next_offset``, the dispatcher drops a delivered idempotency key, a group drops a
station's events no later than its latest).

Faust can also lose a record after its delivery completed: right after a rebalance,
while an agent with isolated partitions has not yet started the actor of a partition,
the conductor's callback for that partition may still point at the revoked actor's
channel (or at none), and the record goes into a queue nobody reads (seen as the last
tick of ``telemetry/11`` never evaluated: a clean stop then left its partition one record
short). Whatever the way a record is lost (a cause not known yet is not ruled out
either), the stall watch finds it: a fenced partition whose acknowledged offset
(``acknowledged_to``: every record below it processed) stands still while records
beyond it were delivered, for ``stall_after_s``, is sought back to that offset (logged
as a warning). A loss costs a delay and some repeats, never a commit stuck for good
with the record unprocessed; and the commit itself never goes over a record not
acknowledged (``_new_offset``). A clean stop (``drained``) watches with
``drain_stall_s`` instead: it has seconds, not minutes.

Contiguous means Vigil's own topics (telemetry, alerts, corroboration): no
transactions, never compacted. (Telemetry's producer is idempotent; Faust's, which
writes alerts, ticks and corroboration records, is not: a retry after a broker restart
may write a record twice, in order, which every stage takes as a repeat.) Table
changelogs are compacted and are not fenced.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from faust.types.transports import ConsumerCallback

from engine.runtime.kafka.fence import OffsetFence, Verdict

__all__ = ["FencedConsumer", "FencedTransport"]


class FencedConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with in-order delivery on the contiguous topics."""

    transport: FencedTransport

    #: Seconds a partition's acknowledged offset may stand still, with records beyond
    #: it delivered, before they are fetched again (many commit intervals: a record
    #: rewound to by the topology comes back well within it, and a batch takes far less).
    stall_after_s: ClassVar[float] = 30.0
    #: The same while a clean stop drains the partitions (``drained``): the stop waits
    #: seconds only, and a repeat costs nothing (every agent takes it as a no-op).
    drain_stall_s: ClassVar[float] = 1.0
    #: How many times, and how far apart (s), partitions the broker says were never
    #: committed are asked about again before they are read from their log's start.
    recheck_committed: ClassVar[tuple[int, float]] = (3, 0.3)

    def __init__(self, *args: Any, callback: ConsumerCallback, **kwargs: Any) -> None:
        #: The latest message whose delivery to the streams completed (``getmany``).
        self._handed: Message | None = None

        async def delivered(message: Message) -> None:
            # Faust's fetcher (``_drain_messages``) calls this for every record it
            # delivers, and may cancel it; only a call that returns has delivered.
            await callback(message)
            self._handed = message

        super().__init__(*args, callback=delivered, **kwargs)
        self.fence = OffsetFence()
        #: Partition -> (its acknowledged offset, since when it stands there: ``clock``).
        self._progress: dict[TP, tuple[int, float]] = {}
        #: Partitions to seek back to a record never acknowledged (``_watch_stalls``).
        self._refetch: dict[TP, int] = {}
        #: When the stall watch last ran (``clock``), and its limit now.
        self._watched = -float("inf")
        self._stall_limit = self.stall_after_s
        self.clock = time.monotonic

    def _fenced(self, tp: TP) -> bool:
        return tp.topic in self.transport.contiguous_topics

    async def perform_seek(self) -> None:
        fence = self.fence
        fence.positioning()
        self._refetch.clear()
        self._progress.clear()
        await super().perform_seek()
        committed = {
            tp: self._committed_offset.get(tp) for tp in self.assignment() if self._fenced(tp)
        }
        # Never committed (or committed at 0, which Faust records as None): the group
        # reads it from the start of the log (auto_offset_reset "earliest"). Taking
        # the first record that came could take a stale one from further on (fresh
        # workers see such fetches) for the start, and Faust then commits over the
        # records before it, never delivered.
        fresh = [tp for tp, offset in committed.items() if offset is None]
        if fresh:
            committed.update(await self._committed_again(fresh))
            fresh = [tp for tp, offset in committed.items() if offset is None]
        if fresh:
            earliest = await self.earliest_offsets(*fresh)
            committed.update((tp, earliest[tp]) for tp in fresh if tp in earliest)
        # Faust's seek left a partition without a committed offset where it was.
        again = fence.positioned(committed) | (set(fresh) & fence.expected.keys())
        for tp in again:
            offset = fence.expected.get(tp)
            if offset is not None:  # else revoked meanwhile
                await self._rewind(tp, offset)

    async def _committed_again(self, tps: list[TP]) -> dict[TP, int]:
        """The committed offsets that asking again finds for ``tps``, which the broker
        just said were never committed.

        Right after a rebalance the broker has answered "no committed offset" for
        partitions the previous owner had committed to their end (seen: a new owner of
        six telemetry partitions at 615 read them from offset 0, committed its way up
        from there, and the group's offsets went back to 24 and 39; three seconds later
        the same question had the right answer). So a partition is taken for never
        committed only after ``recheck_committed`` answers say so; found offsets are
        sought to, as Faust's own positioning does.
        """
        tries, pause = self.recheck_committed
        found: dict[TP, int] = {}
        for _ in range(tries):
            await asyncio.sleep(pause)
            answer = await super().seek_to_committed()
            found = {tp: o for tp in tps if (o := answer.get(tp))}
            if found:
                break
        if found:
            self.log.warning("committed offsets found on asking again: %s", found)
            self._committed_offset.update(found)
            self._read_offset.update(found)
        return found

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)
        self.fence.seeked(partition, offset)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.fence.revoked(revoked)
        for tp in revoked:
            self._progress.pop(tp, None)
            self._refetch.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    def _new_offset(self, tp: TP) -> int | None:
        # Faust commits over an unacknowledged record at the committed offset itself
        # when the records after it are acknowledged (it takes a single missing head
        # for a compacted-away offset: faust-streaming issue 606). On a contiguous
        # topic nothing is compacted away; the record is in flight or was lost on its
        # way to the stream (``_watch_stalls`` fetches it again), and committing over
        # it would lose it at the next hand-over.
        committed = self._committed_offset.get(tp)
        if committed is None:  # none yet: where the fence started it
            committed = self.fence.start.get(tp)
        acked = self._acked.get(tp)
        if (
            committed is not None
            and acked
            and min(acked) > committed
            and self._fenced(tp)
            and not self._gap[tp].overlaps(committed)
        ):
            return None
        offset: int | None = super()._new_offset(tp)
        return offset

    def acknowledged_to(self, tp: TP) -> int | None:
        """The offset below which every record of fenced partition ``tp`` is processed:
        committed, or acknowledged by its stream since (None: not positioned yet)."""
        offset = self._committed_offset.get(tp)
        if offset is None:  # none yet (Faust keeps 0 as None): where the fence started it
            offset = self.fence.start.get(tp)
        if offset is None:
            return None
        acked = self._acked_index.get(tp, ())
        while offset in acked:
            offset += 1
        return offset

    def _watch_stalls(self) -> None:
        """Schedule a refetch (``_refetch``) of each fenced partition whose acknowledged
        offset has stood still for ``_stall_limit`` seconds with records beyond it
        delivered; at most every quarter of that limit (it walks every partition)."""
        now = self.clock()
        if now - self._watched < min(self._stall_limit / 4, 1.0):
            return
        self._watched = now
        for tp, expected in self.fence.expected.items():
            done = self.acknowledged_to(tp)
            if done is None or expected <= done:
                self._progress.pop(tp, None)  # nothing delivered beyond: not stalled
                continue
            seen = self._progress.get(tp)
            if seen is None or seen[0] != done:
                self._progress[tp] = (done, now)
            elif now - seen[1] >= self._stall_limit:
                self._progress[tp] = (done, now)  # and again later, should it be lost again
                self._refetch[tp] = done

    async def drained(
        self, timeout: float, limit: float | None = None
    ) -> dict[TP, tuple[int | None, int]]:
        """Wait until every fenced partition assigned here is processed to the end of its
        log; returns those that are not, with (acknowledged offset, end), as last known
        when the broker does not tell the ends in time. Records lost on the way to the
        streams are fetched again after ``drain_stall_s`` meanwhile. For a clean stop,
        once nothing of this worker writes into the fenced topics any more: what it
        wrote is then applied (a tick's alerts, their watermarks, the corroboration
        records they route) and committed by the stop's final commit, instead of being
        left to the next owner.

        It gives up after ``timeout`` seconds watched without progress (a broker that
        does not answer must not hold a stop back), and after ``limit`` (default
        ``timeout``) seconds in all. A gap of more than ``drain_stall_s`` between two
        looks counts as ``drain_stall_s`` only: it is this process not running (a
        loaded machine), not time watched. Progress is a partition's acknowledged
        offset moving, the assignment changing, or a rebalance under way
        (``app.rebalancing``, the tables' recovery included), which it also waits out:
        a worker stopped just after another left the group is given the other's
        partitions while it drains, and its streams stand still until the rebalance is
        over. A fixed ``timeout`` was mostly used up by that rebalance under load (seen:
        the streams resumed 2.8 s after SIGTERM, the ends still not known when the 5 s
        were up), and a stop that ends before the records its own last tick wrote are
        processed leaves them uncommitted.
        """
        start = looked = self.clock()
        limit = timeout if limit is None else limit
        idle = 0.0  # seconds watched without progress
        seen: tuple[Any, ...] | None = None
        behind: dict[TP, tuple[int | None, int]] = {}
        unknown: BaseException | None = None
        self._stall_limit = self.drain_stall_s
        try:
            while True:
                mine = self._fenced_mine()
                state = (tuple(mine), tuple(self.acknowledged_to(tp) for tp in mine))
                now = self.clock()
                if state != seen or self.app.rebalancing:
                    seen, idle = state, 0.0
                else:
                    idle += min(now - looked, self.drain_stall_s)
                looked = now
                # ``should_stop``: the consumer itself is stopping (a second signal),
                # and nothing it has not delivered yet will be.
                if idle >= timeout or now >= start + limit or self.should_stop:
                    if unknown is not None:
                        self.log.info("drain ends, the log's ends not known: %r", unknown)
                    if behind:
                        self.log.info("drain ends with %s", self._describe(behind))
                    return behind
                try:
                    # Bounded: the ends are asked through the consumer's thread, which
                    # a rebalance keeps busy; progress is looked at again meanwhile.
                    ends = await asyncio.wait_for(
                        self.highwaters(*mine),
                        min(timeout - idle, start + limit - now, self.drain_stall_s),
                    )
                except Exception as exc:  # no answer in time, the broker away, the
                    # consumer's thread stopped: the stop must go on all the same
                    unknown = exc
                    await asyncio.sleep(0.05)  # a refusal comes at once: do not spin
                    continue
                unknown = None
                behind = {}
                for tp in mine:
                    done, end = self.acknowledged_to(tp), ends.get(tp)
                    if end is not None and (done is None or done < end):
                        behind[tp] = (done, end)
                # Not over while a rebalance is, nor on the answer for an assignment
                # that changed while it was asked for.
                if not behind and not self.app.rebalancing and mine == self._fenced_mine():
                    return behind
                await asyncio.sleep(0.05)
        finally:
            self._stall_limit = self.stall_after_s

    def _fenced_mine(self) -> list[TP]:
        """The fenced partitions assigned here, in order."""
        return sorted(tp for tp in self.assignment() if self._fenced(tp))

    def _describe(self, behind: Mapping[TP, tuple[int | None, int]]) -> dict[str, str]:
        """Where each partition of ``behind`` stands, for the log."""
        active = self._active_partitions
        return {
            f"{tp.topic}/{tp.partition}": (
                f"processed to {done}, delivered to {self.fence.expected.get(tp)}, end {end}, "
                f"{'paused' if tp in self._paused_partitions else 'not paused'}, "
                f"{'fetching' if active is None or tp in active else 'not fetching'}, "
                f"flow {'active' if self.flow_active else 'stopped'}"
            )
            for tp, (done, end) in behind.items()
        }

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        """Faust's records, those of the fenced topics in offset order.

        Faust's fetcher delivers each record yielded here before it asks for the next
        one, so on resuming it is known whether that delivery completed.
        """
        fence = self.fence
        skipping: set[TP] = set()  # rewound in this fetch: the rest of it is stale too
        self._watch_stalls()
        while self._refetch:
            tp, offset = self._refetch.popitem()
            self.log.warning(
                "%s: offset %d not acknowledged for %.0f s while later ones were delivered: "
                "lost on its way to the stream, fetching it again",
                tp,
                offset,
                self._stall_limit,
            )
            if await self._rewind(tp, offset):
                fence.seeked(tp, offset)
        async for tp, message in super().getmany(timeout):
            if tp in skipping:
                continue
            if not self._fenced(tp):
                yield tp, message
                continue
            verdict = fence.admit(tp, message.offset)
            if verdict is Verdict.REWIND:
                expected = fence.expected[tp]
                self.log.info(
                    "%s: offset %d came ahead of %d, rewinding", tp, message.offset, expected
                )
                skipping.add(tp)
                if await self._rewind(tp, expected):
                    fence.rewound(tp)
            elif verdict is not Verdict.DROP:
                if verdict is Verdict.HOLE:
                    first, last = fence.holes[tp]
                    self.log.error("%s: offsets %d..%d are gone from the log", tp, first, last)
                self._handed = None
                yield tp, message
                if self._handed is not message and fence.undelivered(tp, message.offset):
                    self.log.info(
                        "%s: delivery of offset %d did not complete, fetching it again",
                        tp,
                        message.offset,
                    )
                    skipping.add(tp)
                    await self._rewind(tp, message.offset)

    async def _rewind(self, tp: TP, offset: int) -> bool:
        """Seek ``tp`` back to ``offset``, bypassing the fence; whether it was done."""
        try:
            await super().seek(tp, offset)
        except Exception as exc:  # revoked meanwhile: its next positioning decides
            self.log.info("%s: rewind to %d not done: %r", tp, offset, exc)
            return False
        return True


class FencedTransport(faust_aiokafka.Transport):
    """Faust's Kafka transport with ``FencedConsumer``."""

    Consumer: ClassVar[type[Any]] = FencedConsumer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Names of the topics whose partitions are delivered strictly in order.
        self.contiguous_topics: frozenset[str] = frozenset()

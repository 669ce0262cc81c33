"""``FencedConsumer`` under Faust's own fetch loop: no record of Vigil's topics is lost.

Faust's fetcher (``Consumer._drain_messages``, run here as it is) hands each record to
the streams under ``wait_first(callback(record), suspend_flow.wait())``. The broker is
one partition's log with a fetch position that seeks move; no I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from engine.runtime.kafka.consumer import FencedConsumer, FencedTransport

TOPIC = "vigil-corroboration"
PART = TP(TOPIC, 5)
FETCH = 3  # records per fetch


class FakeLog:
    """One partition's log, offsets ``0..end-1``, fetched from a position."""

    def __init__(self, end: int, position: int, committed: int | None) -> None:
        self.end = end
        self.position = position
        self.committed = committed
        self.seeks: list[int] = []
        #: Records the next fetch answers with, from before a seek (a stale fetch).
        self.stale: list[int] = []
        #: Called after each record of the first fetch is delivered (or not).
        self.after_first_record: Any = None
        self.fetches = 0

    def record(self, offset: int) -> Any:
        return SimpleNamespace(
            topic=TOPIC, partition=PART.partition, tp=PART, offset=offset, key=b"", value=b""
        )

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        self.fetches += 1
        if self.stale:
            offsets, self.stale = self.stale, []
        else:
            start = self.position
            self.position = min(start + FETCH, self.end)
            offsets = list(range(start, self.position))
        for offset in offsets:
            yield PART, self.record(offset)
            if self.fetches == 1 and self.after_first_record is not None:
                self.after_first_record()
        await asyncio.sleep(0)

    async def seek(self, tp: TP, offset: int) -> None:
        assert tp == PART
        self.seeks.append(offset)
        self.position = offset

    async def seek_to_committed(self) -> Mapping[TP, int | None]:
        if self.committed:  # aiokafka seeks only to a committed offset above 0
            self.position = self.committed
        return {PART: self.committed}

    async def earliest_offsets(self, *partitions: TP) -> Mapping[TP, int]:
        assert partitions == (PART,)
        return {PART: 0}


class Setup:
    """A ``FencedConsumer`` of a Faust app whose streams take records when the flow
    control is open, over a ``FakeLog``. Made in the running event loop (the consumer
    takes the current one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, log: FakeLog) -> None:
        app = faust.App("fence-test", broker="kafka://127.0.0.1:1", autodiscover=False)
        transport = FencedTransport(app.conf.broker_consumer, app)
        transport.contiguous_topics = frozenset({TOPIC})
        app.transport = transport
        self.log = log
        self.delivered: list[int] = []
        self.flow_open = asyncio.Event()  # Faust's flow control, suspended in a rebalance
        self.flow_open.set()
        #: Offsets whose first delivery completes without reaching a stream.
        self.lose: set[int] = set()
        #: Whether the stream acknowledges what it takes (as the agents do).
        self.acks = False

        async def deliver(message: Any) -> None:
            await self.flow_open.wait()
            if message.offset in self.lose:
                # Faust's conductor put it into the queue of an actor already stopped
                # (a rebalance's stale callback): the call returns, nobody reads it.
                self.lose.discard(message.offset)
                return
            self.delivered.append(message.offset)
            if self.acks:
                self.consumer._acked[PART].append(message.offset)
                self.consumer._acked_index[PART].add(message.offset)

        async def nothing(*args: Any, **kwargs: Any) -> None:
            pass

        consumer = transport.create_consumer(
            callback=deliver, on_partitions_revoked=nothing, on_partitions_assigned=nothing
        )
        assert isinstance(consumer, FencedConsumer)
        self.consumer = consumer
        # Bound to the fake log: the consumer's ``super()`` calls land there.
        for name in ("getmany", "seek_to_committed", "earliest_offsets"):
            monkeypatch.setattr(faust_aiokafka.Consumer, name, getattr(log, name))
        monkeypatch.setattr(faust_aiokafka.Consumer, "_seek", log.seek)
        monkeypatch.setattr(faust_aiokafka.Consumer, "assignment", lambda self: {PART})

    async def drain(self, tick: Any = None) -> list[int]:
        """Run Faust's fetch loop until the end of the log is delivered; ``tick`` is
        called at each turn (a test's clock)."""
        consumer = self.consumer
        fetcher = SimpleNamespace(_stopped=asyncio.Event())
        task = asyncio.ensure_future(consumer._drain_messages(fetcher))
        turns = 0
        while (not self.delivered or self.delivered[-1] < self.log.end - 1) and turns < 10_000:
            if consumer.flow_active:
                self.flow_open.set()
            if tick is not None:
                tick()
            await asyncio.sleep(0)
            turns += 1
        fetcher._stopped.set()
        await asyncio.wait_for(task, timeout=10)
        return self.delivered


def test_a_delivery_cancelled_by_the_suspended_flow_is_fetched_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a rebalance Faust seeks (``perform_seek``) before it resumes the flow; a
    record fetched in between has its delivery cancelled and is marked read."""
    log = FakeLog(end=84, position=60, committed=78)

    async def scenario() -> list[int]:
        setup = Setup(monkeypatch, log)
        consumer = setup.consumer
        consumer.stop_flow()
        setup.flow_open.clear()
        await consumer.perform_seek()
        log.seeks.clear()
        log.after_first_record = consumer.resume_flow  # the rebalance completes
        return await setup.drain()

    delivered = asyncio.run(scenario())
    # 78's delivery was cancelled; the partition was sought back to it, and every
    # record reached the stream in offset order, none skipped.
    assert delivered == list(range(78, 84))
    assert log.seeks == [78]


def test_a_partition_never_committed_starts_at_the_log_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a committed offset, a stale fetch from further on is not taken for the
    start of the partition: the records before it would never be delivered."""
    log = FakeLog(end=12, position=0, committed=None)

    async def scenario() -> list[int]:
        setup = Setup(monkeypatch, log)
        await setup.consumer.perform_seek()
        log.stale = [7, 8]  # answered across the seek, from where a fetch stood before
        return await setup.drain()

    assert asyncio.run(scenario()) == list(range(12))


def test_a_commit_held_at_a_record_never_acknowledged_fetches_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever lost a record on its way to the stream, the commit guard notices: the
    record at the committed offset is not acknowledged while later ones are. Held so
    long enough, the partition is sought back to it instead of staying stuck."""
    log = FakeLog(end=84, position=60, committed=78)

    async def scenario() -> tuple[list[int | None], list[int]]:
        setup = Setup(monkeypatch, log)
        consumer = setup.consumer
        now = [0.0]
        consumer.clock = lambda: now[0]
        await consumer.perform_seek()
        for offset in (78, 79, 80):  # fetched and admitted; 78 never reached the stream
            consumer.fence.admit(PART, offset)
        consumer._acked[PART] = [79, 80]
        consumer._acked_index[PART] = {79, 80}
        log.position = 81
        held = [consumer._new_offset(PART)]
        consumer._watch_stalls()  # 78 is seen standing still from now on
        now[0] = 3600.0
        held.append(consumer._new_offset(PART))
        return held, await setup.drain()

    held, delivered = asyncio.run(scenario())
    assert held == [None, None]  # never committed over 78
    assert delivered == list(range(78, 84))


def test_the_last_record_lost_on_its_way_to_the_stream_is_fetched_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record whose delivery completed without reaching a stream (Faust's conductor,
    right after a rebalance, hands it to the revoked actor's queue), with nothing after
    it to acknowledge: no commit guard sees it, yet its partition's acknowledged offset
    stands still with it delivered. After ``stall_after_s`` it is fetched again."""
    log = FakeLog(end=84, position=60, committed=78)

    async def scenario() -> list[int]:
        setup = Setup(monkeypatch, log)
        setup.acks = True
        setup.lose = {83}
        consumer = setup.consumer
        now = [0.0]
        consumer.clock = lambda: now[0]
        await consumer.perform_seek()

        def tick() -> None:
            now[0] += 0.5

        delivered = await setup.drain(tick)
        assert consumer.acknowledged_to(PART) == 84
        return delivered

    assert asyncio.run(scenario()) == list(range(78, 84))
    assert log.seeks[-1] == 83


def test_a_drain_waits_until_every_partition_is_processed_to_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``drained`` (a clean stop) returns once every fenced partition is acknowledged
    to the end of its log, a lost record fetched again within ``drain_stall_s``; and
    names what is not, when its time is up."""
    log = FakeLog(end=84, position=60, committed=78)

    async def scenario() -> tuple[dict[TP, tuple[int | None, int]], list[int], Any]:
        setup = Setup(monkeypatch, log)
        setup.acks = True
        setup.lose = {83}
        consumer = setup.consumer

        async def highwaters(*tps: TP) -> Mapping[TP, int]:
            return {tp: log.end for tp in tps}

        monkeypatch.setattr(consumer, "highwaters", highwaters)
        await consumer.perform_seek()
        fetcher = SimpleNamespace(_stopped=asyncio.Event())
        task = asyncio.ensure_future(consumer._drain_messages(fetcher))
        behind = await consumer.drained(timeout=30.0)
        delivered = list(setup.delivered)
        fetcher._stopped.set()
        await asyncio.wait_for(task, timeout=10)
        log.end = 90  # more than this consumer will ever fetch (its fetches stopped)
        return behind, delivered, await consumer.drained(timeout=0.2)

    behind, delivered, late = asyncio.run(scenario())
    assert behind == {}
    assert delivered == list(range(78, 84))
    assert late == {PART: (84, 90)}


def test_a_drain_waits_out_a_rebalance_that_brings_it_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last worker of a group is stopped just after another left it: the rebalance
    that gives it the other's partitions, with a record not yet processed (its own
    last tick, written into them), begins as its drain does and holds the streams and
    the consumer's thread (the ends are not answered) for longer than the drain's
    ``timeout``. The drain waits it out, and the record is processed before it returns:
    the stop's final commit then reaches the end of the log."""
    log = FakeLog(end=84, position=60, committed=78)
    assigned: set[TP] = set()  # revoked: the rebalance has not assigned anything yet

    async def scenario() -> tuple[dict[TP, tuple[int | None, int]], int | None, list[int]]:
        setup = Setup(monkeypatch, log)
        setup.acks = True
        consumer = setup.consumer
        monkeypatch.setattr(faust_aiokafka.Consumer, "assignment", lambda self: set(assigned))
        app = consumer.app
        rebalanced = asyncio.Event()

        async def highwaters(*tps: TP) -> Mapping[TP, int]:
            await rebalanced.wait()  # the consumer's thread is busy with the rebalance
            return {tp: log.end for tp in tps}

        monkeypatch.setattr(consumer, "highwaters", highwaters)
        app.rebalancing = True
        setup.flow_open.clear()
        fetcher = SimpleNamespace(_stopped=asyncio.Event())
        task = asyncio.ensure_future(consumer._drain_messages(fetcher))

        async def rebalance() -> None:
            await asyncio.sleep(1.0)  # five times the drain's timeout
            assigned.add(PART)
            await consumer.perform_seek()
            app.rebalancing = False  # the tables recovered: the streams resume
            setup.flow_open.set()
            rebalanced.set()

        rebalancing = asyncio.ensure_future(rebalance())
        behind = await consumer.drained(timeout=0.2, limit=30.0)
        done = consumer.acknowledged_to(PART) if assigned else None
        fetcher._stopped.set()
        await rebalancing
        await asyncio.wait_for(task, timeout=10)
        return behind, done, list(setup.delivered)

    behind, done, delivered = asyncio.run(scenario())
    assert behind == {}
    assert done == 84  # processed to the end when the drain returned
    assert delivered == list(range(78, 84))


def test_a_drain_gives_up_at_its_limit_while_a_rebalance_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rebalance that never ends holds a stop back no longer than the drain's limit."""
    log = FakeLog(end=84, position=60, committed=78)

    async def scenario() -> dict[TP, tuple[int | None, int]]:
        setup = Setup(monkeypatch, log)
        consumer = setup.consumer
        now = [0.0]

        def clock() -> float:
            now[0] += 0.1  # each look at the clock: a tenth of a second
            return now[0]

        consumer.clock = clock

        async def highwaters(*tps: TP) -> Mapping[TP, int]:
            return {tp: log.end for tp in tps}

        monkeypatch.setattr(consumer, "highwaters", highwaters)
        await consumer.perform_seek()
        consumer.app.rebalancing = True  # for good; nothing is ever processed
        return await asyncio.wait_for(consumer.drained(timeout=0.5, limit=3.0), timeout=10)

    assert asyncio.run(scenario()) == {PART: (78, 84)}


def test_a_drain_does_not_count_a_gap_in_which_the_worker_did_not_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loaded machine does not run the stopping worker for longer than the drain's
    timeout: that gap is not time the drain watched without progress (a worker
    stopped with SIGSTOP for 6 s just after its SIGTERM ended its drain at once, its
    last ticks unprocessed and uncommitted)."""
    log = FakeLog(end=84, position=60, committed=78)

    async def scenario() -> tuple[dict[TP, tuple[int | None, int]], int | None]:
        setup = Setup(monkeypatch, log)
        setup.acks = True
        consumer = setup.consumer
        now = [0.0]
        consumer.clock = lambda: now[0]
        asks = [0]

        async def highwaters(*tps: TP) -> Mapping[TP, int]:
            asks[0] += 1
            if asks[0] == 1:
                now[0] += 10.0  # the process did not run meanwhile
            elif asks[0] == 2:
                setup.flow_open.set()  # from now on the streams take records
            now[0] += 0.05
            return {tp: log.end for tp in tps}

        monkeypatch.setattr(consumer, "highwaters", highwaters)
        await consumer.perform_seek()
        setup.flow_open.clear()
        fetcher = SimpleNamespace(_stopped=asyncio.Event())
        task = asyncio.ensure_future(consumer._drain_messages(fetcher))
        behind = await consumer.drained(timeout=2.0, limit=60.0)
        done = consumer.acknowledged_to(PART)
        fetcher._stopped.set()
        setup.flow_open.set()
        await asyncio.wait_for(task, timeout=10)
        return behind, done

    behind, done = asyncio.run(scenario())
    assert behind == {}
    assert done == 84


class ForgetfulLog(FakeLog):
    """A broker whose first answer after a rebalance says "never committed"."""

    def __init__(self, end: int, committed: int) -> None:
        super().__init__(end, position=committed, committed=None)
        self.answers: list[int | None] = [None, committed]

    async def seek_to_committed(self) -> Mapping[TP, int | None]:
        if len(self.answers) > 1:
            self.committed = self.answers.pop(0)
        else:
            self.committed = self.answers[0]
        return await super().seek_to_committed()


def test_a_committed_offset_answered_missing_once_is_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A partition committed to 78 that the broker once says was never committed is not
    read from the start of its log (which committed the group's offsets backwards)."""
    log = ForgetfulLog(end=84, committed=78)

    async def scenario() -> list[int]:
        setup = Setup(monkeypatch, log)
        setup.consumer.recheck_committed = (3, 0.0)
        await setup.consumer.perform_seek()
        return await setup.drain()

    assert asyncio.run(scenario()) == list(range(78, 84))
    assert 0 not in log.seeks


def test_a_drain_does_not_wait_on_a_broker_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM stops within seconds with the broker away: the drain's ask for the end
    offsets is bounded by its own time."""
    log = FakeLog(end=84, position=60, committed=78)

    async def scenario() -> dict[TP, tuple[int | None, int]]:
        setup = Setup(monkeypatch, log)
        consumer = setup.consumer

        async def highwaters(*tps: TP) -> Mapping[TP, int]:
            await asyncio.Event().wait()  # no answer, ever
            raise AssertionError

        monkeypatch.setattr(consumer, "highwaters", highwaters)
        await consumer.perform_seek()
        return await asyncio.wait_for(consumer.drained(timeout=0.2), timeout=10)

    assert asyncio.run(scenario()) == {}

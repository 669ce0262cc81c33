"""``FencedConsumer`` under Faust's own fetch loop: a cancelled delivery is not lost.

Faust's fetcher (``Consumer._drain_messages``, run here as it is) hands each record to
the streams under ``wait_first(callback(record), suspend_flow.wait())``. After a
rebalance, Faust positions the partitions (``perform_seek``) before it resumes the flow;
a record fetched in between has its delivery cancelled and is marked read all the same.
The broker is a list of offsets with a fetch position; no I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from engine.kafka.consumer import FencedConsumer, FencedTransport

TOPIC = "vigil-corroboration"
PART = TP(TOPIC, 5)
END = 84  # the log holds offsets 0..END-1
FETCH = 3  # records per fetch


class FakeLog:
    """One partition's log, fetched from a position that a seek moves."""

    def __init__(self, consumer: FencedConsumer) -> None:
        self.consumer = consumer
        self.position = 78
        self.seeks: list[int] = []
        self.fetches = 0

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        self.fetches += 1
        start = self.position
        self.position = min(start + FETCH, END)
        for offset in range(start, self.position):
            record = SimpleNamespace(
                topic=TOPIC, partition=PART.partition, tp=PART, offset=offset, key=b"", value=b""
            )
            yield PART, record
            if self.fetches == 1:
                # The rebalance completes: Faust resumes the flow after its seek.
                self.consumer.resume_flow()
        await asyncio.sleep(0)

    async def seek(self, tp: TP, offset: int) -> None:
        assert tp == PART
        self.seeks.append(offset)
        self.position = offset


async def _run(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], FakeLog]:
    app = faust.App("fence-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    transport = FencedTransport(app.conf.broker_consumer, app)
    transport.contiguous_topics = frozenset({TOPIC})
    app.transport = transport
    delivered: list[int] = []
    flow_open = asyncio.Event()  # Faust's flow control, suspended in a rebalance

    async def deliver(message: Any) -> None:
        await flow_open.wait()
        delivered.append(message.offset)

    async def nothing(*args: Any, **kwargs: Any) -> None:
        pass

    consumer = transport.create_consumer(
        callback=deliver, on_partitions_revoked=nothing, on_partitions_assigned=nothing
    )
    assert isinstance(consumer, FencedConsumer)
    log = FakeLog(consumer)
    # Bound to the fake log: the consumer's ``super()`` calls land there.
    monkeypatch.setattr(faust_aiokafka.Consumer, "getmany", log.getmany)
    monkeypatch.setattr(faust_aiokafka.Consumer, "_seek", log.seek)

    # Mid-rebalance: the flow is stopped; perform_seek put the partition at its
    # committed offset 78 (Faust's read offset, and the fence's).
    consumer.stop_flow()
    consumer._read_offset[PART] = 78
    consumer.fence.positioned({PART: 78})

    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    drain = asyncio.ensure_future(consumer._drain_messages(fetcher))
    loop_turns = 0
    while (not delivered or delivered[-1] < END - 1) and loop_turns < 10_000:
        if consumer.flow_active:
            flow_open.set()
        await asyncio.sleep(0)
        loop_turns += 1
    fetcher._stopped.set()
    await asyncio.wait_for(drain, timeout=10)
    return delivered, log


def test_a_delivery_cancelled_by_the_suspended_flow_is_fetched_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    delivered, log = asyncio.run(_run(monkeypatch))
    # 78's delivery was cancelled; the partition was sought back to it, and every
    # record reached the stream in offset order, none skipped.
    assert delivered == list(range(78, END))
    assert log.seeks == [78]

"""A Kafka worker's dispatcher handing over, without a broker.

When the group revokes the dispatch partition in a rebalance (an orderly hand-over:
another worker joined, or came back), aiokafka awaits the revoke callback before the
rebalance completes and another worker gets the partition. The owner then starts no
send, lets the sends in flight finish and commits their marks before it returns: the
next owner loads them and sends nothing twice. A fenced transaction poisons the
producer; the outbox then refuses every later store as fenced, whatever aiokafka says.
``tests/integration/test_dispatch_kafka_stall.py`` exercises both on a real Kafka.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import ProducerFenced

from engine.contracts.notification import Notification
from engine.dispatch.clock import ManualClock
from engine.runtime.dispatch.kafka_ownership import DispatchOwnership, _Listener
from engine.runtime.dispatch.kafka_service import KafkaDispatchService
from engine.runtime.dispatch.kafka_store import KafkaOutbox
from tests.unit.dispatch_support import T0, config

ROUTING = """
version: 1
receivers: [{name: duty, type: jsonl, path: log.jsonl}]
route: {receivers: [duty], group_by: [station], group_wait: 0s, group_interval: 1m}
"""
TP = TopicPartition("app-dispatch", 0)


class _Producer:
    """Plays a transactional producer: a transaction's records reach ``topic`` (the
    compacted state topic: a record sets its key, a tombstone removes it) only when it
    commits. ``fence()``: the next send is refused as fenced, and the producer is then
    in aiokafka's fatal state (a new transaction fails with its AssertionError)."""

    def __init__(self) -> None:
        self.topic: dict[bytes, bytes] = {}
        self.commits = 0
        self._txn: list[tuple[bytes, bytes | None]] | None = None
        self._fence_next = False
        self._fatal = False
        self.stopped = False

    def fence(self) -> None:
        self._fence_next = True

    def transaction(self) -> _Producer:
        return self

    async def __aenter__(self) -> None:
        assert not self._fatal, "Invalid state transition FATAL_ERROR -> IN_TRANSACTION"
        self._txn = []

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        txn, self._txn = self._txn, None
        if exc_type is not None or txn is None:
            return
        for key, value in txn:
            if value is None:
                self.topic.pop(key, None)
            else:
                self.topic[key] = value
        self.commits += 1

    async def send(
        self, topic: str, *, key: bytes, value: bytes | None, partition: int
    ) -> asyncio.Future[None]:
        if self._fence_next:
            self._fatal = True
            raise ProducerFenced()
        assert self._txn is not None
        self._txn.append((key, value))
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sent.set_result(None)
        return sent

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True


def _outbox(producer: _Producer) -> KafkaOutbox:
    """The outbox a new owner loads from what ``producer`` committed."""
    return KafkaOutbox(
        producer,  # type: ignore[arg-type]
        "app-dispatch-state", TP, "app-dispatcher", dict(producer.topic),
    )  # fmt: skip


def _n(key: str) -> Notification:
    return Notification(key, "duty", "firing", "red", {}, (), {}, T0, "")


class _HeldReceiver:
    """Confirms a send only once ``answer`` is set (a slow receiver, the send in flight)."""

    name = "duty"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.answer = asyncio.Event()
        self.confirmed: list[str] = []

    async def send(self, n: Notification) -> None:
        self.started.set()
        await self.answer.wait()
        self.confirmed.append(n.key)

    async def aclose(self) -> None:
        return None


def test_a_revoked_owner_commits_the_mark_of_its_send_in_flight_before_it_lets_go() -> None:
    async def main() -> None:
        producer = _Producer()
        # The previous owner committed one notification, not yet delivered.
        first = _outbox(producer)
        await first.commit(first.prepare(None, [_n("duty:g:1")]))

        receiver = _HeldReceiver()
        service = KafkaDispatchService(
            config(ROUTING), _outbox(producer), {"duty": receiver}, ManualClock(T0)
        )
        dispatch = DispatchOwnership.__new__(DispatchOwnership)  # only the bookkeeping
        dispatch.lock = asyncio.Lock()
        dispatch.service = service
        dispatch._producer = producer  # type: ignore[assignment]
        dispatch._restarting = None
        dispatch._stopping = False
        dispatch._service_task = asyncio.create_task(dispatch._serve(service, 1.0))

        await asyncio.wait_for(receiver.started.wait(), 10)
        # The group revokes the partition while the receiver has the notification.
        revoke = asyncio.create_task(_Listener(dispatch).on_partitions_revoked([TP]))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not revoke.done()  # it waits for the send in flight
        receiver.answer.set()  # the receiver confirms it
        await asyncio.wait_for(revoke, 10)

        assert receiver.confirmed == ["duty:g:1"]
        assert producer.stopped
        # The next owner loads the mark: nothing pending, so nothing sent again.
        after = _outbox(producer)
        assert after.pending() == []
        assert [d["notification"]["key"] for d in after.delivered()] == ["duty:g:1"]

    asyncio.run(main())


def test_a_store_queued_behind_a_fenced_one_is_refused_as_fenced() -> None:
    async def main() -> None:
        producer = _Producer()
        box = _outbox(producer)
        producer.fence()
        with pytest.raises(ProducerFenced):
            await box.commit(box.prepare(None, [_n("duty:g:1")]))
        with pytest.raises(ProducerFenced):  # not aiokafka's AssertionError
            await box.commit(box.prepare(None, [_n("duty:g:2")]))
        assert box.fenced and producer.commits == 0

    asyncio.run(main())

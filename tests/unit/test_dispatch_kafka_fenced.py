"""What a Kafka worker's dispatcher does when its service fails, without a broker.

A worker that stood still past its session timeout (a stall, SIGSTOP) wakes with its
old assignment: its consumer has not heard of the rebalance yet. Its first store is
then refused with ``ProducerFenced`` (the new owner's producer took the transactional
id). Taking the dispatcher over again on that stale assignment would fence the rightful
owner in turn and run two dispatchers at once; the group, which knows who owns the
partition, assigns it again if it is this worker's. Any other failure (the broker away)
restarts the dispatcher from the stored state while the partition is still ours.

Nor may the woken worker send what it had queued: before a delivery it proves it still
owns the dispatcher by a store made within ``OWNERSHIP_S`` (else it makes one, which the
fence refuses), and a service that fails takes its delivery loops down with it.
``tests/integration/test_dispatch_kafka_stall.py`` stops a real owner on a real Kafka.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaConnectionError, ProducerFenced

from engine.contracts.notification import Notification
from engine.dispatch.clock import ManualClock
from engine.runtime.dispatch.kafka_ownership import DispatchOwnership
from engine.runtime.dispatch.kafka_service import OWNERSHIP_S, KafkaDispatchService
from engine.runtime.dispatch.outbox import Entry, Outbox
from engine.runtime.dispatch.service import DispatchService
from tests.unit.dispatch_support import T0, config

ROUTING = """
version: 1
receivers: [{name: duty, type: jsonl, path: log.jsonl}]
route: {receivers: [duty], group_by: [station], group_wait: 0s, group_interval: 1m}
"""


class _FailingService:
    def __init__(self, exc: Exception, fenced: bool) -> None:
        self.exc = exc
        self.outbox = SimpleNamespace(fenced=fenced)
        self.receivers: dict[str, object] = {}

    async def run_forever(self, tick_s: float) -> None:
        raise self.exc


def _after_failure(exc: Exception, *, fenced: bool = False) -> list[str]:
    """The calls ``DispatchOwnership`` makes once its service's loop raised ``exc`` (and its
    outbox had, or had not, seen a transaction fenced)."""
    calls: list[str] = []
    dispatch = DispatchOwnership.__new__(DispatchOwnership)  # only the bookkeeping
    service = _FailingService(exc, fenced)

    async def release(*, store: bool = True) -> None:
        calls.append(f"release(store={store})")
        dispatch.service = None

    async def take_over() -> None:
        calls.append("take_over")

    dispatch.lock = asyncio.Lock()
    dispatch.release = release  # type: ignore[method-assign]
    dispatch.take_over = take_over  # type: ignore[method-assign]
    dispatch.service = service  # type: ignore[assignment]
    dispatch._service_task = None
    dispatch._restarting = None
    dispatch._stopping = False

    async def go() -> None:
        await dispatch._serve(service, 1.0)  # type: ignore[arg-type]
        assert dispatch._restarting is not None
        await dispatch._restarting

    asyncio.run(go())
    return calls


def test_fenced_it_lets_go_and_waits_for_the_group() -> None:
    assert _after_failure(ProducerFenced()) == ["release(store=False)"]


def test_another_failure_restarts_from_the_stored_state() -> None:
    assert _after_failure(KafkaConnectionError()) == ["release(store=False)", "take_over"]


def test_any_failure_after_a_fence_lets_go_and_waits_for_the_group() -> None:
    """The store that raised may be one queued behind the fenced one: aiokafka's producer
    is then in a fatal state and refuses it with another error (seen on a woken owner:
    AssertionError, FATAL_ERROR -> IN_TRANSACTION). Restarting on that would fence the
    rightful owner from a stale assignment."""
    fatal = AssertionError("Invalid state transition FATAL_ERROR -> IN_TRANSACTION")
    assert _after_failure(fatal, fenced=True) == ["release(store=False)"]


class _Recorder:
    name = "duty"

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, n: Notification) -> None:
        self.sent.append(n.key)

    async def aclose(self) -> None:
        return None


def test_a_failed_service_takes_its_delivery_loops_down(tmp_path: Path) -> None:
    """A tick whose store failed ends ``run_forever``; a delivery loop left running
    would send what is queued afterwards (on Kafka: what the new owner sends too)."""

    async def main() -> None:
        receiver = _Recorder()
        service = DispatchService(
            config(ROUTING), Outbox(tmp_path / "d"), {"duty": receiver}, ManualClock(T0)
        )

        async def failing_ticks(tick_s: float) -> None:
            await asyncio.sleep(0.01)
            raise ProducerFenced()

        service._tick_forever = failing_ticks  # type: ignore[method-assign]
        with pytest.raises(ProducerFenced):
            await service.run_forever(1.0)
        late = Notification("duty:g:1", "duty", "firing", "red", {}, (), {}, T0, "")
        service._enqueue(Entry(1, late))
        for _ in range(20):
            await asyncio.sleep(0)
        assert receiver.sent == []

    asyncio.run(main())


def test_a_stale_owner_proves_ownership_before_it_sends() -> None:
    stores: list[str] = []

    async def fenced_store(notifications: tuple[()]) -> None:
        stores.append("store")
        raise ProducerFenced()

    async def main() -> None:
        fresh = SimpleNamespace(confirmed_at=time.monotonic(), _store=fenced_store)
        await KafkaDispatchService.may_send(fresh)  # type: ignore[arg-type]
        assert stores == []  # a store committed just now proves it
        stale = SimpleNamespace(
            confirmed_at=time.monotonic() - OWNERSHIP_S - 1, _store=fenced_store
        )
        with pytest.raises(ProducerFenced):
            await KafkaDispatchService.may_send(stale)  # type: ignore[arg-type]
        assert stores == ["store"]

    asyncio.run(main())

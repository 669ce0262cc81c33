"""A Kafka worker's dispatcher restarting after a failure, and stopping, without a broker.

A worker that owns the dispatch partition but cannot take the dispatcher over would
drop what it reads and dispatch nothing until the next rebalance, looking healthy: it
ends the process instead (Faust's crash of the app), whichever path got it there --
aiokafka's rebalance listener (which swallows exceptions) or the restart task nobody
awaits. While a failed service waits for its restart, the API sees no service (it
must not store the failed one's state). A worker that stops takes nothing over.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from engine.runtime.dispatch import kafka_ownership
from engine.runtime.dispatch.kafka_ownership import DispatchOwnership, _Listener

TP = TopicPartition("app-dispatch", 0)


class _App:
    """Records Faust's crash of the app (the worker's exit for a restart)."""

    def __init__(self) -> None:
        self.crashes: list[BaseException] = []
        self.crashed = asyncio.Event()

    async def crash(self, reason: BaseException) -> None:
        self.crashes.append(reason)
        self.crashed.set()


class _Consumer:
    """A dispatcher consumer that was assigned the dispatch partition."""

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def stop(self) -> None:
        return None


class _FailingService:
    def __init__(self) -> None:
        self.outbox = SimpleNamespace(fenced=False)
        self.receivers: dict[str, Any] = {}

    async def run_forever(self, tick_s: float) -> None:
        raise KafkaConnectionError()


def _dispatch(acquire: Any) -> tuple[DispatchOwnership, _App]:
    """The ownership bookkeeping of a worker assigned the partition; ``acquire`` plays
    taking the dispatcher over."""
    app = _App()
    dispatch = DispatchOwnership.__new__(DispatchOwnership)
    dispatch.crash = app.crash
    dispatch.tp = TP
    dispatch.lock = asyncio.Lock()
    dispatch.service = None
    dispatch._service_task = None
    dispatch._producer = None
    dispatch._consumer = _Consumer()  # type: ignore[assignment]
    dispatch._run_task = None
    dispatch._restarting = None
    dispatch._stopping = False
    dispatch._crashing = None
    dispatch.acquire = acquire  # type: ignore[method-assign]
    return dispatch, app


def test_an_owner_that_cannot_take_over_ends_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka_ownership, "_ACQUIRE_RETRY_S", 0.0)

    async def broker_away() -> None:
        raise KafkaConnectionError()

    async def main() -> None:
        dispatch, app = _dispatch(broker_away)
        # aiokafka swallows what the listener raises: it must not be the only signal.
        await _Listener(dispatch).on_partitions_assigned([TP])
        assert len(app.crashes) == 1

    asyncio.run(main())


def test_a_restart_that_fails_unexpectedly_ends_the_process() -> None:
    async def main() -> None:
        dispatch, app = _dispatch(None)

        async def broken_release(*, store: bool = True) -> None:
            raise OSError("unexpected")

        dispatch.release = broken_release  # type: ignore[method-assign]
        service = _FailingService()
        dispatch.service = service  # type: ignore[assignment]
        await dispatch._serve(service, 1.0)  # type: ignore[arg-type]
        await asyncio.wait_for(app.crashed.wait(), 10)
        assert isinstance(app.crashes[0], OSError)

    asyncio.run(main())


def test_a_failed_service_is_no_longer_served_while_its_restart_waits() -> None:
    acquired: list[str] = []

    async def acquire() -> None:
        acquired.append("acquire")

    async def main() -> None:
        dispatch, app = _dispatch(acquire)
        service = _FailingService()
        dispatch.service = service  # type: ignore[assignment]
        async with dispatch.lock:  # a rebalance callback holds it
            await dispatch._serve(service, 1.0)  # type: ignore[arg-type]
            assert dispatch.service is None
        assert dispatch._restarting is not None
        await asyncio.wait_for(dispatch._restarting, 10)
        assert acquired == ["acquire"] and app.crashes == []

    asyncio.run(main())


def test_a_stopping_worker_takes_nothing_over() -> None:
    acquired: list[str] = []

    async def acquire() -> None:
        acquired.append("acquire")

    async def main() -> None:
        dispatch, app = _dispatch(acquire)
        service = _FailingService()
        dispatch.service = service  # type: ignore[assignment]
        await dispatch._serve(service, 1.0)  # type: ignore[arg-type]
        restarting = dispatch._restarting
        assert restarting is not None and not restarting.done()
        await dispatch.stop()
        for _ in range(20):
            await asyncio.sleep(0)
        assert restarting.done()
        # A rebalance during shutdown assigns the partition again: still nothing.
        await _Listener(dispatch).on_partitions_assigned([TP])
        assert acquired == [] and app.crashes == []

    asyncio.run(main())

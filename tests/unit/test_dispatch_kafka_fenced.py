"""What a Kafka worker's dispatcher does when its service fails, without a broker.

A worker that stood still past its session timeout (a stall, SIGSTOP) wakes with its
old assignment: its consumer has not heard of the rebalance yet. Its first store is
then refused with ``ProducerFenced`` (the new owner's producer took the transactional
id). Taking the dispatcher over again on that stale assignment would fence the rightful
owner in turn and run two dispatchers at once; the group, which knows who owns the
partition, assigns it again if it is this worker's. Any other failure (the broker away)
restarts the dispatcher from the stored state while the partition is still ours.
``tests/integration/test_dispatch_kafka_stall.py`` stops a real owner on a real Kafka.
"""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaConnectionError, ProducerFenced

from engine.runtime.dispatch.kafka import KafkaDispatch


class _FailingService:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def run_forever(self, tick_s: float) -> None:
        raise self.exc


def _after_failure(exc: Exception) -> list[str]:
    """The calls ``KafkaDispatch`` makes once its service's loop raised ``exc``."""
    calls: list[str] = []
    dispatch = KafkaDispatch.__new__(KafkaDispatch)  # only the ownership bookkeeping
    service = _FailingService(exc)

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

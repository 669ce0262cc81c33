"""The ingest pool's time-ordered merge of its workers' backlogs
(``MqttIngestPool._merge``), with the worker processes left out: batches are put where
``_handle`` puts them (``WorkerView.pending``) and the appends are a recording
``produce``. Through real processes and mosquitto:
tests/integration/test_mqtt_processes_gateway.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from connectors.mqtt import pool_merge
from connectors.mqtt.options import MqttOptions
from connectors.mqtt.pool import CATCH_UP_WAIT_S, MqttIngestPool
from engine.contracts.batch import ReadingBlock


class _Appends:
    """A ``produce`` that records what it appends, or fails while ``failing``."""

    def __init__(self) -> None:
        self.blocks: list[list[tuple[str, list[int]]]] = []
        self.failing = False

    async def __call__(self, readings: list[Any]) -> None:
        if self.failing:
            raise OSError("No space left on device")
        self.blocks.append([(b.station, list(b.ts)) for b in readings])


async def _nothing(*args: Any) -> None:
    return None


def _batch(pool: MqttIngestPool, k: int, station: str, ts: list[int]) -> asyncio.Future[None]:
    """Worker ``k``'s batch of ``station``'s readings at ``ts``, waiting for the merge."""
    done = asyncio.get_running_loop().create_future()
    w = pool._workers[k]
    w.pending = (
        pool_merge.columns([ReadingBlock(station, "water_level", ts, [1.0] * len(ts))]),
        done,
    )
    w.last_batch_at = asyncio.get_running_loop().time()
    return done


def _catching(appends: _Appends) -> MqttIngestPool:
    pool = MqttIngestPool(MqttOptions(processes=2, broker_drops_topic=None), appends, _nothing)
    pool._failed = asyncio.get_running_loop().create_future()  # what ``join`` raises
    for w in pool._workers:
        w.catching_up = True
        w.reported = True
        w.connection.connected = True
        w.last_batch_at = asyncio.get_running_loop().time()
    return pool


async def _a_worker_with_no_batch_is_waited_for_a_while_only() -> None:
    appends = _Appends()
    pool = _catching(appends)
    done = _batch(pool, 0, "HZ001", [1, 2, 3])
    pool._merge()
    await asyncio.sleep(0)
    assert appends.blocks == [] and not done.done()  # worker 1 may hold older readings
    # Worker 1 sends nothing (its mark never comes back): once its last batch is
    # CATCH_UP_WAIT_S old, the watchdog's next merge stops waiting for it.
    pool._workers[1].last_batch_at -= CATCH_UP_WAIT_S + 1
    pool._merge()
    await asyncio.wait_for(done, 5)
    assert appends.blocks == [[("HZ001", [1, 2, 3])]]


def test_a_catching_up_worker_that_sends_nothing_is_not_waited_for_for_ever() -> None:
    asyncio.run(_a_worker_with_no_batch_is_waited_for_a_while_only())


async def _a_failed_append_answers_no_part_of_a_batch() -> None:
    appends = _Appends()
    pool = _catching(appends)
    first = _batch(pool, 0, "HZ001", [1, 2])
    second = _batch(pool, 1, "HZ002", [1, 5, 9])  # up to 2 goes with the first, 5 and 9 wait
    appends.failing = True
    pool._merge()
    with pytest.raises(OSError):
        await asyncio.wait_for(first, 5)
    # The part of the second batch that was in the failed append is lost: the rest must
    # not be answered as durable by a later append, or the worker would acknowledge it.
    appends.failing = False
    pool._workers[0].catching_up = False  # its process exited (``_serve``'s merge)
    pool._merge()
    with pytest.raises(OSError):
        await asyncio.wait_for(second, 5)
    assert appends.blocks == []
    assert pool._failed is not None and isinstance(pool._failed.exception(), OSError)


def test_a_batch_partly_in_a_failed_append_is_never_answered_as_durable() -> None:
    asyncio.run(_a_failed_append_answers_no_part_of_a_batch())


class _FailingOnce(_Appends):
    """A ``produce`` whose first append waits for ``release``, then fails."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self, readings: list[Any]) -> None:
        self.calls += 1
        if self.calls == 1:
            await self.release.wait()
            raise OSError("No space left on device")
        await super().__call__(readings)


async def _an_append_after_a_failed_one_answers_nothing() -> None:
    appends = _FailingOnce()
    pool = _catching(appends)
    first = _batch(pool, 0, "HZ001", [1, 2])
    second = _batch(pool, 1, "HZ002", [1, 5, 9])  # up to 2 goes in append T1 (slow, fails)
    pool._merge()
    await asyncio.sleep(0)
    assert appends.calls == 1 and not second.done()
    # Worker 0 has caught up: the rest of the second batch goes in append T2, queued
    # behind T1, answering the second batch.
    pool._workers[0].catching_up = False
    pool._merge()
    appends.release.set()  # T1 fails
    with pytest.raises(OSError):
        await asyncio.wait_for(first, 5)
    # T2 must not append and answer the second batch as durable: its first part was in
    # T1, lost; the worker would acknowledge it. And the gateway stops.
    with pytest.raises(OSError):
        await asyncio.wait_for(second, 5)
    assert appends.blocks == []
    assert pool._failed is not None and isinstance(pool._failed.exception(), OSError)


def test_an_append_queued_behind_a_failed_one_answers_nothing_and_the_gateway_stops() -> None:
    asyncio.run(_an_append_after_a_failed_one_answers_nothing())

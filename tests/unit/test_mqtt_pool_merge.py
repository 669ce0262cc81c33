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


def test_a_batch_partly_in_a_failed_append_is_never_answered_as_durable() -> None:
    asyncio.run(_a_failed_append_answers_no_part_of_a_batch())


# ---- live batches: merged in time order up to the oldest ``upto`` ----------------------


class _Writer:
    """A worker's socket as the pool writes to it: how many frames (answers) it got."""

    def __init__(self) -> None:
        self.frames = 0

    def write(self, data: bytes) -> None:
        self.frames += 1

    def is_closing(self) -> bool:
        return False


def _live(appends: _Appends, upto: int) -> MqttIngestPool:
    """A pool of two running workers that have caught up, each having handed on
    everything it received before ``upto`` (epoch ms), just now."""
    pool = MqttIngestPool(MqttOptions(processes=2, broker_drops_topic=None), appends, _nothing)
    now = asyncio.get_running_loop().time()
    for w in pool._workers:
        w.reported, w.connection.connected, w.caught_up = True, True, True
        w.writer = _Writer()  # type: ignore[assignment]
        w.upto, w.upto_at = upto, now
    return pool


async def _produce(
    pool: MqttIngestPool, k: int, upto: int, *messages: tuple[str, list[int], int]
) -> asyncio.Future[None]:
    """Worker ``k`` hands on a batch of ``messages`` (station, reading times, when it
    received the message: epoch ms) and its ``upto``, as its frame: done once the pool
    has answered it."""
    sensors: dict[str, tuple[list[int], list[float], list[int], list[int]]] = {}
    for station, ts, received in messages:
        c = sensors.setdefault(station, ([], [], [], []))
        c[0].extend(ts)
        c[1].extend([1.0] * len(ts))
        c[2].append(received)
        c[3].append(len(ts))
    frame = ("produce", [(s, "water_level", *c) for s, c in sensors.items()], upto)
    w = pool._workers[k]
    writer = w.writer
    assert isinstance(writer, _Writer)
    answers = writer.frames
    await pool._handle(w, frame)  # returns at once: the worker's next frames are read
    return asyncio.ensure_future(_answered(writer, answers + 1))


async def _answered(writer: _Writer, frames: int) -> None:
    while writer.frames < frames:
        await asyncio.sleep(0.001)


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def _a_backlog_and_a_live_reading_on_two_workers_go_in_time_order() -> None:
    appends = _Appends()
    pool = _live(appends, upto=100)
    # A device's live reading (worker 0, received at 150) and, sent before it, its
    # backlog (worker 1, received at 140: stamped first, read second).
    live = await _produce(pool, 0, 150, ("HZ001", [9_000], 150))
    await _settle()
    assert appends.blocks == [] and not live.done()  # worker 1 may hold older readings
    backlog = await _produce(pool, 1, 160, ("HZ001", [1_000, 2_000, 3_000], 140))
    await asyncio.wait_for(asyncio.gather(live, backlog), 5)
    assert appends.blocks == [[("HZ001", [1_000, 2_000, 3_000, 9_000])]]  # one block, in order


def test_live_batches_of_two_workers_are_appended_as_one_block_in_time_order() -> None:
    asyncio.run(_a_backlog_and_a_live_reading_on_two_workers_go_in_time_order())


async def _what_came_after_the_oldest_upto_waits() -> None:
    appends = _Appends()
    pool = _live(appends, upto=100)
    # Worker 0's batch: a message received at 120 and one at 170; worker 1 has handed
    # on what it received before 150: the first goes, the second waits for it.
    first = await _produce(pool, 0, 170, ("HZ001", [5_000], 120), ("HZ002", [6_000], 170))
    await _settle()
    assert appends.blocks == [] and not first.done()
    await pool._handle(pool._workers[1], ("upto", 150))
    await _settle()
    assert appends.blocks == [[("HZ001", [5_000])]] and not first.done()  # part of it
    # Worker 1's batch: a reading of HZ002 received at 160, older than worker 0's.
    second = await _produce(pool, 1, 180, ("HZ002", [4_000], 160))
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert appends.blocks == [[("HZ001", [5_000])], [("HZ002", [4_000, 6_000])]]


def test_a_live_batch_goes_in_parts_up_to_the_oldest_upto_and_is_answered_once_all_in() -> None:
    asyncio.run(_what_came_after_the_oldest_upto_waits())


async def _a_quiet_worker_is_waited_for_a_while_only() -> None:
    appends = _Appends()
    pool = _live(appends, upto=100)
    batch = await _produce(pool, 0, 200, ("HZ001", [5_000, 6_000], 150))
    await _settle()
    assert appends.blocks == [] and not batch.done()
    # Worker 1 sends nothing more (stopped, hung, gone): no frame and no other merge
    # comes, yet the batch goes once worker 1 has been quiet for LIVE_WAIT_S.
    await asyncio.wait_for(batch, 5)  # LIVE_WAIT_S after worker 1's last upto
    assert appends.blocks == [[("HZ001", [5_000, 6_000])]]


def test_a_quiet_worker_holds_the_live_batches_back_for_live_wait_s_at_most() -> None:
    asyncio.run(_a_quiet_worker_is_waited_for_a_while_only())


def test_merged_sorts_by_time_within_each_sensor_stably_and_keeps_a_lone_part_as_sent() -> None:
    one: pool_merge.Sensors = [("A", "m", [3, 1], [0.3, 0.1], [10], [2])]
    assert [(b.station, b.ts, b.value) for b in pool_merge.merged([one])] == [
        ("A", [3, 1], [0.3, 0.1])  # one worker's: as it came
    ]
    other: pool_merge.Sensors = [
        ("B", "m", [5], [0.5], [11], [1]),
        ("A", "m", [2, 1], [0.2, 9.0], [11], [2]),
    ]
    got = [(b.station, b.ts, b.value) for b in pool_merge.merged([one, other])]
    # A tie (time 1) keeps the order of the parts: worker 0's reading first.
    assert got == [("A", [1, 1, 2, 3], [0.1, 9.0, 0.2, 0.3]), ("B", [5], [0.5])]

"""The rules every ingest connector shares (``connectors.ingest``), on a stand-in
protocol: acknowledge only after the durable append, dead-letter any failing message
with its reason and raw bytes, count what was sent at most once, batch from any thread."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import pytest

from connectors.ingest import Inbound, MicroBatcher, PayloadError, Reading, deliver


def _decode(m: Inbound) -> list[Reading]:
    if m.payload == b"bad":
        raise PayloadError("not a reading")
    if m.payload == b"bug":
        raise ZeroDivisionError("a case the decoder missed")
    return [(m.source, "water_level", m.received_ms, float(m.payload))]


def test_acks_only_after_readings_and_dead_letters_are_durable() -> None:
    log: list[str] = []

    async def produce(readings: list[Reading]) -> None:
        await asyncio.sleep(0)  # durable only once this resolves
        log.append(f"produced {len(readings)}")

    async def dead_letter(raw: bytes, reason: str, source: str) -> None:
        await asyncio.sleep(0)
        log.append(f"dead {raw!r} {reason} {source}")

    def ack(name: str) -> Inbound:
        return Inbound(
            name, b"bad" if name == "S2" else b"1.5", 7, lambda: log.append(f"ack {name}")
        )

    counters: Counter[str] = Counter()
    messages = [ack("S1"), ack("S2"), Inbound("S3", b"2", 8, None)]
    asyncio.run(deliver(messages, _decode, produce, dead_letter, counters))
    assert log == ["produced 2", "dead b'bad' not a reading S2", "ack S1", "ack S2"]
    assert counters == Counter(received=3, at_most_once=1, readings=2, dead_letter=1)


def test_any_exception_dead_letters_that_message_only() -> None:
    produced: list[Reading] = []
    dead: list[tuple[bytes, str, str]] = []

    async def produce(readings: list[Reading]) -> None:
        produced.extend(readings)

    async def dead_letter(raw: bytes, reason: str, source: str) -> None:
        dead.append((raw, reason, source))

    messages = [Inbound("S1", b"bug", 1, None), Inbound("S2", b"3", 2, None)]
    asyncio.run(deliver(messages, _decode, produce, dead_letter, Counter()))
    assert produced == [("S2", "water_level", 2, 3.0)]
    assert dead == [(b"bug", "ingest error: ZeroDivisionError: a case the decoder missed", "S1")]


def test_a_failed_append_acknowledges_nothing() -> None:
    acked: list[str] = []

    async def produce(readings: list[Reading]) -> None:
        raise OSError("log not writable")

    async def dead_letter(raw: bytes, reason: str, source: str) -> None:
        raise AssertionError("no dead letters here")

    messages = [Inbound("S1", b"1", 1, lambda: acked.append("S1"))]
    with pytest.raises(OSError, match="log not writable"):
        asyncio.run(deliver(messages, _decode, produce, dead_letter, Counter()))
    assert acked == []


def test_batcher_takes_items_from_another_thread_in_batches() -> None:
    async def run() -> list[list[int]]:
        batcher: MicroBatcher[int] = MicroBatcher(max_items=3, linger_ms=10_000)
        batcher.bind(asyncio.get_running_loop())
        sender = threading.Thread(target=lambda: [batcher.put(i) for i in range(7)])
        sender.start()
        sender.join()
        return [await batcher.next_batch(), await batcher.next_batch()]

    # Full batches go at once, without waiting out the linger.
    assert asyncio.run(run()) == [[0, 1, 2], [3, 4, 5]]


def test_batcher_removes_what_waits_unwanted_and_hands_on_the_rest_in_order() -> None:
    async def run() -> tuple[int, list[int]]:
        batcher: MicroBatcher[int] = MicroBatcher(max_items=100, linger_ms=0)
        batcher.bind(asyncio.get_running_loop())
        for i in range(7):
            batcher.put(i)
        removed = batcher.remove(lambda i: i % 2 == 1)
        batcher.put(7)
        return removed, await batcher.next_batch()

    assert asyncio.run(run()) == (3, [0, 2, 4, 6, 7])


def test_batcher_lingers_then_takes_what_came() -> None:
    async def run() -> list[int]:
        batcher: MicroBatcher[int] = MicroBatcher(max_items=100, linger_ms=20)
        batcher.bind(asyncio.get_running_loop())
        batcher.put(1)
        batcher.put(2)
        return await batcher.next_batch()

    assert asyncio.run(run()) == [1, 2]


def test_batcher_wakes_the_loop_per_batch_not_per_item() -> None:
    wakeups: list[object] = []

    async def run() -> list[list[int]]:
        loop = asyncio.get_running_loop()
        call_soon_threadsafe = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any) -> Any:
            wakeups.append(callback)
            return call_soon_threadsafe(callback, *args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        batcher: MicroBatcher[int] = MicroBatcher(max_items=400, linger_ms=10_000)
        batcher.bind(loop)
        sender = threading.Thread(target=lambda: [batcher.put(i) for i in range(800)])
        sender.start()
        sender.join()
        return [await batcher.next_batch() for _ in range(2)]

    batches = asyncio.run(run())
    assert [i for b in batches for i in b] == list(range(800))
    assert [len(b) for b in batches] == [400, 400]
    # Woken when the first item came and when a batch's worth was waiting; not per item.
    assert len(wakeups) == 2

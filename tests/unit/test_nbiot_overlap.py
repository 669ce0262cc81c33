"""NB-IoT batches overlap (``NbiotIngest._run``): the next batch is decoded and handed to
the log while the one before is still being written, and answered only after it, in
order. A batch whose write fails answers none of its uplinks, nor any of a later
batch (even one whose own write succeeded), and stops the ingest. A sealed payload's
counter is written only with its own batch (``seal.Counters.take``), and a resend in
the next batch of a payload still being written is answered as a duplicate only
once that payload is durable."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from connectors.ingest import Reading
from connectors.nbiot.products import load_products
from connectors.nbiot.seal import Counters, seal
from connectors.nbiot.service import NbiotIngest, NbiotOptions
from connectors.nbiot.uplink import Uplink
from engine.contracts.batch import ReadingBlock
from engine.contracts.devices import Device
from simulators.nbiot_fleet import encode

NOW_S = 1_800_000_000
KEY = bytes(range(16))
DEVICES = {
    "861000000000041": Device("861000000000041", "HZ001", "waterlog-v1", None, {}),
    "861000000000042": Device("861000000000042", "HZ001", "waterlog-v1", KEY, {}),
}
WAIT_S = 30.0


class Lookup:
    def lookup(self, identity: str) -> Device | None:
        return DEVICES.get(identity)


class Log:
    """A produce whose writes the test completes (or fails) one by one."""

    def __init__(self) -> None:
        self.writes: list[tuple[list[Reading | ReadingBlock], asyncio.Future[None]]] = []
        self.changed = asyncio.Event()

    async def produce(self, readings: Sequence[Reading | ReadingBlock]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.writes.append((list(readings), done))
        self.changed.set()
        await done

    async def wait_writes(self, n: int) -> None:
        async with asyncio.timeout(WAIT_S):
            while len(self.writes) < n:
                self.changed.clear()
                await self.changed.wait()


async def _no_dead_letter(raw: bytes, reason: str, source: str) -> None:
    raise AssertionError(f"dead-lettered: {reason}")


def waterlog(ts_s: int) -> bytes:
    rows = [(ts_s, {"water_depth": 0.5, "battery_v": 3.6})]
    return encode(load_products().get("waterlog-v1"), rows)


class Answers:
    def __init__(self) -> None:
        self.order: list[str] = []

    def uplink(self, name: str, identity: str, payload: bytes) -> Uplink:
        return Uplink(
            name,
            payload,
            NOW_S * 1000,
            lambda: self.order.append(name),
            path="coap",
            identity=identity,
        )


async def _started(tmp_path: Path) -> tuple[NbiotIngest, Log]:
    log = Log()
    ingest = NbiotIngest(
        NbiotOptions(
            coap_port=None, udp_port=None, push_port=None, state_dir=tmp_path, linger_ms=0
        ),
        Lookup(),
        load_products(),
        produce=log.produce,
        dead_letter=_no_dead_letter,
    )
    await ingest.start()
    return ingest, log


async def _settle() -> None:
    """Give the loop turns: whatever could run now has run."""
    for _ in range(20):
        await asyncio.sleep(0.01)


def test_the_next_batch_is_written_meanwhile_and_answered_after(tmp_path: Path) -> None:
    async def run() -> None:
        ingest, log = await _started(tmp_path)
        answers = Answers()
        try:
            ingest._submit(answers.uplink("first", "861000000000041", waterlog(NOW_S)))
            await log.wait_writes(1)
            ingest._submit(answers.uplink("second", "861000000000041", waterlog(NOW_S + 1)))
            # Handed to the log while the first write is still in flight.
            await log.wait_writes(2)
            log.writes[1][1].set_result(None)  # the second is durable first
            await _settle()
            assert answers.order == [], "answered before the batch before it was durable"
            log.writes[0][1].set_result(None)
            async with asyncio.timeout(WAIT_S):
                while len(answers.order) < 2:
                    await asyncio.sleep(0.01)
            assert answers.order == ["first", "second"]
        finally:
            await ingest.stop()

    asyncio.run(run())


def test_a_failed_write_answers_nothing_of_it_or_after_it(tmp_path: Path) -> None:
    async def run() -> None:
        ingest, log = await _started(tmp_path)
        answers = Answers()
        try:
            ingest._submit(answers.uplink("first", "861000000000041", waterlog(NOW_S)))
            await log.wait_writes(1)
            ingest._submit(answers.uplink("second", "861000000000041", waterlog(NOW_S + 1)))
            await log.wait_writes(2)
            log.writes[1][1].set_result(None)  # the later write succeeds ...
            log.writes[0][1].set_exception(OSError("disk full"))  # ... the earlier fails
            with pytest.raises(OSError, match="disk full"):
                async with asyncio.timeout(WAIT_S):
                    await ingest.join()  # stops at once, with no further uplink
            await _settle()
            assert answers.order == []
            assert ingest.state == "failed"
        finally:
            await ingest.stop()

    asyncio.run(run())


def test_a_resend_of_a_payload_being_written_waits_for_it(tmp_path: Path) -> None:
    async def run() -> None:
        ingest, log = await _started(tmp_path / "a")
        answers = Answers()
        sealed = seal(KEY, "861000000000042", 7, waterlog(NOW_S))
        try:
            ingest._submit(answers.uplink("sealed", "861000000000042", sealed))
            await log.wait_writes(1)
            resend = answers.uplink("resend", "861000000000042", sealed)
            ingest._submit(resend)
            await _settle()
            assert resend.duplicate  # decoded: a duplicate of the one being written
            assert answers.order == [], "a duplicate answered before its original is durable"
            log.writes[0][1].set_result(None)
            async with asyncio.timeout(WAIT_S):
                while len(answers.order) < 2:
                    await asyncio.sleep(0.01)
            assert answers.order == ["sealed", "resend"]
            assert len(log.writes) == 1  # the duplicate wrote no reading
        finally:
            await ingest.stop()

    asyncio.run(run())


def test_counters_are_written_only_with_their_own_batch(tmp_path: Path) -> None:
    counters = Counters(tmp_path / "counters")
    tag_a, tag_b = b"a" * 8, b"b" * 8
    counters.accept("A", 1, tag_a)
    first = counters.take()
    counters.accept("B", 1, tag_b)  # the next batch's, decoded meanwhile
    # Until written and forgotten, both are seen (a resend is a duplicate).
    assert not counters.check("A", 1, tag_a)
    assert not counters.check("B", 1, tag_b)
    counters.write(first)
    counters.forget(first)
    assert not counters.check("A", 1, tag_a)  # now from the store
    counters.close()
    reopened = Counters(tmp_path / "counters")  # what a crash now would leave
    try:
        assert not reopened.check("A", 1, tag_a)
        assert reopened.check("B", 1, tag_b), "B written before its batch was durable"
    finally:
        reopened.close()

"""Storage bounds: oversized payloads cut short into the dead letters, the dead-letter
topic capped by size, trimmed space given back to the disk, and the storage guard's
decisions (alert before the cap, pause at it, resume under it)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

from connectors.ingest import KEPT_BYTES, Inbound, Reading, deliver
from engine.contracts.alerts import AlertEvent
from engine.runtime.storage import RULE_ID, Limits, StorageGuard, Usage, measure
from engine.runtime.transport.log import Append, DurableLog
from engine.runtime.transport.retention import cap_topic

MB = 1_000_000


def test_an_oversized_payload_is_dead_lettered_cut_short_with_its_length() -> None:
    produced: list[Reading] = []
    dead: list[tuple[bytes, str, str]] = []
    acked: list[str] = []

    async def produce(readings: list[Reading]) -> None:
        produced.extend(readings)

    async def dead_letter(raw: bytes, reason: str, source: str) -> None:
        dead.append((raw, reason, source))

    def decode(m: Inbound) -> list[Reading]:
        return [(m.source, "water_level", 1, float(len(m.payload)))]

    huge = b"x" * (10 * MB)
    messages = [
        Inbound("S1", huge, 1, lambda: acked.append("S1")),
        Inbound("S2", b"7" * 4096, 2, lambda: acked.append("S2")),  # at the limit: taken
    ]
    counters: Counter[str] = Counter()
    asyncio.run(deliver(messages, decode, produce, dead_letter, counters, 4096))
    assert produced == [("S2", "water_level", 1, 4096.0)]
    assert dead == [
        (
            huge[:KEPT_BYTES],
            "payload of 10000000 bytes is over the 4096 allowed (storage.max_payload_bytes); "
            "its first 1024 bytes are kept",
            "S1",
        )
    ]
    assert acked == ["S1", "S2"]
    assert counters["oversized"] == 1


def test_the_dead_letter_topic_keeps_its_newest_records_within_its_cap(tmp_path: Path) -> None:
    log = DurableLog(tmp_path)
    log.create_topic("dl", 1)
    log.append([Append("dl", 0, b"k", bytes([i]) * 1000, i) for i in range(50)])
    assert cap_topic(log, "dl", 10_500) == 40
    kept = log.read("dl", 0, 0, 100)
    assert [r.offset for r in kept] == list(range(40, 50))
    assert cap_topic(log, "dl", 10_500) == 0
    log.close()


def test_trimming_gives_the_space_back_to_the_disk(tmp_path: Path) -> None:
    log = DurableLog(tmp_path)
    log.create_topic("dl", 1)
    for i in range(20):
        log.append([Append("dl", 0, None, os.urandom(100_000), i) for _ in range(10)])
    log._db.flush()  # into a table file, as a running gateway's log is
    full = measure(tmp_path).data_bytes
    assert full > 20 * MB
    cap_topic(log, "dl", 1 * MB)
    log.close()
    assert measure(tmp_path).data_bytes < 3 * MB  # not only marked deleted: gone


class _Ingest:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.paused = False

    def pause(self, why: str) -> None:
        if not self.paused:
            self.calls.append(f"pause: {why}")
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.calls.append("resume")
        self.paused = False


def test_the_guard_alerts_before_the_cap_pauses_at_it_and_resumes_under_it() -> None:
    usages = iter(
        [
            Usage(50 * MB, 10_000 * MB),  # ok
            Usage(85 * MB, 10_000 * MB),  # over 80 % of 100 MB: yellow
            Usage(100 * MB, 10_000 * MB),  # at the cap: orange, paused
            Usage(60 * MB, 15 * MB),  # under 2 x the minimum free: yellow, resumed
            Usage(60 * MB, 10_000 * MB),  # ok: resolved
        ]
    )
    sent: list[AlertEvent] = []
    ingest = _Ingest()
    clock = iter(range(1000, 10_000, 1000))

    async def send(events: list[AlertEvent]) -> None:
        sent.extend(events)

    guard = StorageGuard(
        data_dir=Path("/data"),
        limits=Limits(data_dir_max=100 * MB, min_free=10 * MB, warn_fraction=0.8),
        gateway="gw1",
        ingest=ingest,
        send=send,
        measure=lambda _: next(usages),
        clock=lambda: next(clock),
    )

    async def run() -> None:
        for _ in range(5):
            await guard.check()

    asyncio.run(run())
    assert [(e.rule_id, e.station, e.previous_level, e.level, e.started_at) for e in sent] == [
        (RULE_ID, "gw1", "none", "yellow", 1000),
        (RULE_ID, "gw1", "yellow", "orange", 1000),
        (RULE_ID, "gw1", "orange", "yellow", 1000),
        (RULE_ID, "gw1", "yellow", "none", 1000),
    ]
    assert [e.value for e in sent] == [85.0, 100.0, 60.0, 60.0]
    assert sent[1].summary == (
        "gateway gw1: storage full, ingest paused (the broker keeps the messages): data "
        "directory /data takes 100.0 MB of 100.0 MB allowed (storage.data_dir_max_mb); "
        "10000.0 MB free on its filesystem, ingest pauses under 10.0 MB (storage.min_free_mb)"
    )
    assert [c.split(":")[0] for c in ingest.calls] == ["pause", "resume"]

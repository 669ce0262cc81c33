"""A Kafka worker's dead letters read as the gateway's are: the same page, the same JSON.

``read_kafka_dead_letters`` (the worker's ``GET /vigil/dead-letters``) and
``read_dead_letters`` (the gateway's, on the embedded log) are given the same dead
letters, in the same order, with the same append times; every query (paging by
``next``, ``since``, a reason class or words of the reason, the scan bound, a start past
the end, a topic that does not exist) must answer the same page from both. A real Kafka
broker; a machine without one fails this test, it never skips.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from engine.contracts.dead_letters import REASON_HEADER, RECEIVED_AT_HEADER, SOURCE_HEADER
from engine.runtime.kafka.topics import TopicLayout, ensure_topics
from engine.runtime.services.dead_letters import (
    MAX_PAYLOAD_BYTES,
    read_dead_letters,
    read_kafka_dead_letters,
)
from engine.runtime.transport.log import Append, DurableLog

T0 = 1_719_763_200_000

#: (reason, source, payload, with a received-at header)
LETTERS: list[tuple[str, str, bytes, bool]] = [
    ("payload is not JSON: Expecting value", "vigil/HZ003/water_level", b"not json", True),
    ("value must be a number, got 'high'", "vigil/HZ003/water_level", b'{"value":"high"}', True),
    ("unknown station 'NOPE1'", "vigil/NOPE1/water_level", b'{"value":1.0}', True),
    (
        "payload is not JSON: bad bytes",
        "vigil/HZ003/rainfall",
        b"\xff" * (MAX_PAYLOAD_BYTES + 9),
        True,
    ),
    ("payload is not JSON: escape", "vigil/HZ003/rainfall", b"\x1b[2J\xe2\x80\xae", False),
    *[
        (f"late for rule flood.river_level by {i} s", f"G{i:03d}/water_level", b"{}", True)
        for i in range(12)
    ],
]


def _headers(i: int, reason: str, source: str, received: bool) -> list[tuple[str, bytes]]:
    headers = [(REASON_HEADER, reason.encode()), (SOURCE_HEADER, source.encode())]
    if received:
        headers.append((RECEIVED_AT_HEADER, str(T0 + i * 1000 + 7).encode()))
    return headers


async def _produce(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=1 << 20)
    await producer.start()
    try:
        for i, (reason, source, payload, received) in enumerate(LETTERS):
            await producer.send_and_wait(
                topic, payload, key=source.encode(), partition=0, timestamp_ms=T0 + i * 1000,
                headers=_headers(i, reason, source, received),
            )  # fmt: skip
    finally:
        await producer.stop()


def test_a_kafka_workers_dead_letter_pages_are_the_gateways(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    layout = TopicLayout(f"vigil-dl-{uuid.uuid4().hex[:8]}", 2)
    topic = layout.dead_letter
    asyncio.run(ensure_topics(kafka_bootstrap, layout))
    asyncio.run(_produce(kafka_bootstrap, topic))
    log = DurableLog(tmp_path / "data")
    try:
        log.create_topic(topic, 1)
        log.append([
            Append(topic, 0, source.encode(), payload, T0 + i * 1000,
                   tuple(_headers(i, reason, source, received)))
            for i, (reason, source, payload, received) in enumerate(LETTERS)
        ])  # fmt: skip

        def both(name: str = topic, **query: Any) -> dict[str, Any]:
            kafka = asyncio.run(read_kafka_dead_letters(kafka_bootstrap, name, **query))
            assert kafka == read_dead_letters(log, name, **query), query
            return kafka

        page = both()
        assert [r["class"] for r in page["records"][:5]] == [
            "not_json", "bad_value", "unknown_station", "not_json", "not_json",
        ]  # fmt: skip
        assert len(page["records"]) == len(LETTERS) and page["next"] == page["end"] == len(LETTERS)
        big = page["records"][3]
        assert big["truncated"] and big["size"] == MAX_PAYLOAD_BYTES + 9
        assert page["records"][4]["received_at"] == T0 + 4 * 1000  # no header: append time

        # Paged by ``next``, five at a time: the same records, oldest first.
        paged: list[dict[str, Any]] = []
        start = None
        while start is None or start < page["end"]:
            part = both(start=start, limit=5)
            assert len(part["records"]) <= 5
            paged += part["records"]
            start = part["next"]
        assert paged == page["records"]

        assert [r["offset"] for r in both(since_ms=T0 + 6 * 1000)["records"]] == list(
            range(6, len(LETTERS))
        )
        assert len(both(reason="late")["records"]) == 12
        assert [r["offset"] for r in both(reason="NOPE1")["records"]] == [2]
        bounded = both(reason="late", scan=7)  # looked at 7 records, 2 of them late
        assert [r["offset"] for r in bounded["records"]] == [5, 6] and bounded["next"] == 7
        assert both(start=len(LETTERS) + 5)["records"] == []
        assert both(name=f"{topic}-missing") == {"records": [], "next": 0, "end": 0}
    finally:
        log.close()

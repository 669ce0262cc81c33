"""Reading the dead-letter topic while the gateway or a Kafka worker runs.

The gateway owns its log (RocksDB's lock refuses a second process), so ``vigil
dead-letters`` reads through the web API (``GET /vigil/dead-letters``), which calls
``read_dead_letters`` in a worker thread. A Kafka worker answers the same request from
the cluster's ``<app_id>-dead-letter`` topic with ``read_kafka_dead_letters``: a
short-lived consumer of its own (no group, nothing committed) reads the page and is
closed. Either way a page is bounded twice: at most ``limit`` records returned, and at
most ``scan`` records looked at, so a filter that matches little never walks the whole
topic in one request; ``next`` says where to go on. Payloads are returned
base64-encoded, cut at ``MAX_PAYLOAD_BYTES`` (``size`` is the whole length): the bytes
are whatever a device sent.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from engine.contracts.dead_letters import (
    REASON_HEADER,
    RECEIVED_AT_HEADER,
    SOURCE_HEADER,
    reason_class,
)
from engine.runtime.transport.log import DurableLog

__all__ = ["MAX_PAYLOAD_BYTES", "read_dead_letters", "read_kafka_dead_letters"]

#: The most of one payload a page returns (bytes).
MAX_PAYLOAD_BYTES = 64 * 1024

#: The most records a page reads from Kafka in one fetch (bytes are bounded by the
#: consumer's fetch sizes).
_KAFKA_CHUNK = 500


class _Page:
    """The records of one page as they are scanned, the reason filter applied."""

    def __init__(self, reason: str | None, limit: int) -> None:
        self.wanted = reason.lower() if reason else None
        self.limit = limit
        self.records: list[dict[str, Any]] = []

    @property
    def full(self) -> bool:
        return len(self.records) >= self.limit

    def add(
        self, offset: int, timestamp: int, headers: Iterable[tuple[str, bytes]], value: bytes | None
    ) -> None:
        """One scanned record (``timestamp``: its append time, epoch ms)."""
        fields = dict(headers)
        text = fields.get(REASON_HEADER, b"").decode("utf-8", "replace")
        cls = reason_class(text)
        if self.wanted is not None and self.wanted != cls and self.wanted not in text.lower():
            return
        payload = value or b""
        received = fields.get(RECEIVED_AT_HEADER)
        self.records.append({
            "offset": offset,
            "received_at": int(received) if received else timestamp,
            "reason": text,
            "class": cls,
            "source": fields.get(SOURCE_HEADER, b"").decode("utf-8", "replace"),
            "size": len(payload),
            "payload_b64": base64.b64encode(payload[:MAX_PAYLOAD_BYTES]).decode(),
            "truncated": len(payload) > MAX_PAYLOAD_BYTES,
        })  # fmt: skip


def read_dead_letters(
    log: DurableLog,
    topic: str,
    *,
    start: int | None = None,
    since_ms: int | None = None,
    reason: str | None = None,
    limit: int = 100,
    scan: int = 10_000,
) -> dict[str, Any]:
    """One page of dead letters of partition 0 of ``topic``.

    Starts at offset ``start`` (a previous page's ``next``), else at the first record
    appended at or after ``since_ms`` (epoch ms), else at the oldest kept. ``reason``
    keeps the records whose reason class equals it or whose reason text contains it
    (case-insensitive).
    Returns ``{"records": [...], "next": offset to continue from, "end": the topic's
    highwater}``; each record ``{"offset", "received_at" (ms), "reason", "class",
    "source", "size", "payload_b64", "truncated"}``, oldest first.
    """
    if log.partitions(topic) is None:
        return {"records": [], "next": 0, "end": 0}
    earliest = log.earliest(topic, 0)
    if start is None:
        start = earliest if since_ms is None else log.first_offset_since(topic, 0, since_ms)
    start = max(start, earliest)  # retention may have trimmed below a page's ``next``
    page = _Page(reason, limit)
    position = start
    scanned = 0
    while not page.full and scanned < scan:
        chunk = log.read(topic, 0, position, min(500, scan - scanned))
        if not chunk:
            break
        for record in chunk:
            position = record.offset + 1
            scanned += 1
            page.add(record.offset, record.timestamp, record.headers, record.value)
            if page.full:
                break
    return {"records": page.records, "next": position, "end": log.highwater(topic, 0)}


async def read_kafka_dead_letters(
    bootstrap: str,
    topic: str,
    *,
    start: int | None = None,
    since_ms: int | None = None,
    reason: str | None = None,
    limit: int = 100,
    scan: int = 10_000,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """``read_dead_letters`` of partition 0 of a Kafka topic (the same page, the same
    arguments), read by a consumer that lives for this call only.

    ``end`` is the partition's end offset when the call began: records appended later
    are left to the next page. Raises ``TimeoutError`` when the page is not read within
    ``timeout_s`` (the broker away), ``aiokafka.errors.KafkaError`` on the broker's
    errors.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        # ``assign`` starts a position reset in the background; should it win over the
        # seek below, "earliest" costs a rescan, never records skipped.
        auto_offset_reset="earliest",
        max_poll_records=_KAFKA_CHUNK,
        request_timeout_ms=int(timeout_s * 1000),
    )
    async with asyncio.timeout(timeout_s):
        try:
            await consumer.start()
            return await _read_kafka_page(consumer, topic, start, since_ms, reason, limit, scan)
        finally:
            await consumer.stop()  # also after a failed start: no half-started client


async def _read_kafka_page(
    consumer: AIOKafkaConsumer,
    topic: str,
    start: int | None,
    since_ms: int | None,
    reason: str | None,
    limit: int,
    scan: int,
) -> dict[str, Any]:
    if topic not in await consumer.topics():  # all metadata: asking for one would create it
        return {"records": [], "next": 0, "end": 0}
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    earliest = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    if start is None and since_ms is not None:
        found = (await consumer.offsets_for_times({tp: since_ms}))[tp]
        start = end if found is None else found.offset
    # Retention may have trimmed below a page's ``next``.
    position = max(start if start is not None else earliest, earliest)
    page = _Page(reason, limit)
    scanned = 0
    if position < end:
        consumer.seek(tp, position)
    while position < end and not page.full and scanned < scan:
        batches = await consumer.getmany(
            tp, timeout_ms=500, max_records=min(_KAFKA_CHUNK, scan - scanned)
        )
        for record in batches.get(tp, []):
            if record.offset >= end:  # appended after this page began: the next page's
                position = end
                break
            position = record.offset + 1
            scanned += 1
            page.add(record.offset, record.timestamp, record.headers, record.value)
            if page.full:
                break
        else:
            # Nothing more in this fetch: offsets with no record (transaction markers)
            # are skipped by the consumer's position.
            position = max(position, min(await consumer.position(tp), end))
    return {"records": page.records, "next": position, "end": end}

"""Reading the dead-letter topic of the embedded log while the gateway runs.

The gateway owns its log (RocksDB's lock refuses a second process), so ``vigil
dead-letters`` reads through the gateway's API (``GET /vigil/dead-letters``), which calls
``read_dead_letters`` in a worker thread. A page is bounded twice: at most ``limit``
records returned, and at most ``scan`` records looked at, so a filter that matches
little never walks the whole topic in one request; ``next`` says where to go on.
Payloads are returned base64-encoded, cut at ``MAX_PAYLOAD_BYTES`` (``size`` is the
whole length): the bytes are whatever a device sent.
"""

from __future__ import annotations

import base64
from typing import Any

from engine.contracts.dead_letters import (
    REASON_HEADER,
    RECEIVED_AT_HEADER,
    SOURCE_HEADER,
    reason_class,
)
from engine.runtime.transport.log import DurableLog

__all__ = ["MAX_PAYLOAD_BYTES", "read_dead_letters"]

#: The most of one payload a page returns (bytes).
MAX_PAYLOAD_BYTES = 64 * 1024


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
    "source", "size", "payload_b64", "truncated"}``.
    """
    if log.partitions(topic) is None:
        return {"records": [], "next": 0, "end": 0}
    earliest = log.earliest(topic, 0)
    if start is None:
        start = earliest if since_ms is None else log.first_offset_since(topic, 0, since_ms)
    start = max(start, earliest)  # retention may have trimmed below a page's ``next``
    wanted = reason.lower() if reason else None
    out: list[dict[str, Any]] = []
    position = start
    scanned = 0
    while len(out) < limit and scanned < scan:
        chunk = log.read(topic, 0, position, min(500, scan - scanned))
        if not chunk:
            break
        for record in chunk:
            position = record.offset + 1
            scanned += 1
            headers = dict(record.headers)
            text = headers.get(REASON_HEADER, b"").decode("utf-8", "replace")
            cls = reason_class(text)
            if wanted is not None and wanted != cls and wanted not in text.lower():
                continue
            payload = record.value or b""
            received = headers.get(RECEIVED_AT_HEADER)
            out.append({
                "offset": record.offset,
                "received_at": int(received) if received else record.timestamp,
                "reason": text,
                "class": cls,
                "source": headers.get(SOURCE_HEADER, b"").decode("utf-8", "replace"),
                "size": len(payload),
                "payload_b64": base64.b64encode(payload[:MAX_PAYLOAD_BYTES]).decode(),
                "truncated": len(payload) > MAX_PAYLOAD_BYTES,
            })  # fmt: skip
            if len(out) >= limit:
                break
    return {"records": out, "next": position, "end": log.highwater(topic, 0)}

"""Retention for the embedded log: an edge gateway's disk must not fill up.

A partition keeps its records for ``retention_ms`` after they were appended, and longer
when a reader still needs them: nothing below the lowest offset committed by the groups
that read the topic is kept only for its age, and nothing at or above it is ever
deleted (an acknowledged reading stays until it has been evaluated). Compacted topics
(the corroboration tables' changelogs) are never trimmed by age: they are the table.
Topics no group reads (dead letters) go by age alone.
"""

from __future__ import annotations

import logging

from engine.runtime.transport.log import DurableLog

__all__ = ["enforce_retention"]

logger = logging.getLogger(__name__)


def enforce_retention(durable: DurableLog, retention_ms: int, now_ms: int) -> int:
    """Trim every partition of ``durable`` as the module docstring says; returns the number
    of offsets deleted. ``retention_ms`` and ``now_ms`` in milliseconds."""
    deleted = 0
    for topic, partitions in durable.topics().items():
        if durable.topic_config(topic).get("compacting"):
            continue
        for partition in range(partitions):
            before = durable.first_offset_since(topic, partition, now_ms - retention_ms)
            floor = durable.committed_floor(topic, partition)
            if floor is not None:
                before = min(before, floor)
            earliest = durable.earliest(topic, partition)
            if before > earliest:
                durable.trim(topic, partition, before)
                deleted += before - earliest
    if deleted:
        hours = retention_ms / 3_600_000
        logger.info("retention: deleted %d records older than %g h", deleted, hours)
    return deleted

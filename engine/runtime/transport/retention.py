"""Retention for the embedded log: an edge gateway's disk must not fill up.

A partition keeps its records for ``retention_ms`` after they were appended, and longer
when a reader still needs them: nothing below the lowest offset committed by the groups
that read the topic is kept only for its age, and nothing at or above it is ever
deleted (an acknowledged reading stays until it has been evaluated). Compacted topics
(the corroboration tables' changelogs) are never trimmed by age: they are the table.
Topics no group reads (dead letters) go by age, and by size: ``cap_topic`` keeps only
the newest records of a topic up to a number of bytes (what a flood of garbage can take).
"""

from __future__ import annotations

import logging

from engine.runtime.transport.log import DurableLog

__all__ = ["cap_topic", "enforce_retention"]

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


def cap_topic(durable: DurableLog, topic: str, max_bytes: int) -> int:
    """Trim ``topic`` to its newest records of at most ``max_bytes`` (shared evenly by its
    partitions, as stored); returns the number of offsets deleted. For a topic no group
    reads (the dead letters): a group's unread records would be trimmed too."""
    deleted = 0
    partitions = durable.partitions(topic) or 0
    for partition in range(partitions):
        before = durable.first_offset_keeping(topic, partition, max_bytes // partitions)
        earliest = durable.earliest(topic, partition)
        if before > earliest:
            durable.trim(topic, partition, before)
            deleted += before - earliest
    if deleted:
        logger.warning(
            "%s over %d MB: deleted its %d oldest records", topic, max_bytes // 10**6, deleted
        )
    return deleted

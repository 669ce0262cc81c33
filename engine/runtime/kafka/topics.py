"""Create Vigil's topics on a Kafka cluster, with their partition counts and retention.

Faust creates only its internal topics, and a consumer that subscribes to a missing
topic is never assigned its partitions, so ``vigil worker`` and ``vigil ingest`` call
``ensure_topics`` before they start. It is idempotent: existing topics are kept as they
are, but a telemetry topic whose partition count differs is an error (the station ->
partition mapping would silently change).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from engine.runtime.corroboration.wire import TABLES

__all__ = ["TopicLayout", "TopicMismatch", "bootstrap_of", "ensure_topics"]

DAY_MS = 24 * 3600 * 1000


class TopicMismatch(RuntimeError):
    """An existing topic cannot serve (wrong partition count)."""


def bootstrap_of(broker: str) -> str:
    """``kafka://h1:9092;h2:9092`` or ``kafka://h1:9092,h2:9092`` -> ``h1:9092,h2:9092``."""
    rest = broker.split("://", 1)[1] if "://" in broker else broker
    return rest.replace(";", ",").rstrip("/")


@dataclass(frozen=True)
class TopicLayout:
    """Names and settings of one app's topics (names prefixed by the app id)."""

    app_id: str
    partitions: int
    replication: int = 1
    telemetry_retention_ms: int = 7 * DAY_MS
    alerts_retention_ms: int = 30 * DAY_MS
    dead_letter_retention_ms: int = 30 * DAY_MS

    @property
    def telemetry(self) -> str:
        return f"{self.app_id}-telemetry"

    @property
    def alerts(self) -> str:
        return f"{self.app_id}-alerts"

    @property
    def dead_letter(self) -> str:
        return f"{self.app_id}-dead-letter"

    @property
    def checkpoints(self) -> str:
        return f"{self.app_id}-checkpoints"

    @property
    def corroboration(self) -> str:
        return f"{self.app_id}-corroboration"

    @property
    def changelogs(self) -> list[str]:
        return [f"{self.app_id}-{table}-changelog" for table in TABLES]

    def new_topics(self) -> list[NewTopic]:
        # Telemetry batches are up to a few MB; checkpoints grow with the sensors of a
        # partition (80 bytes per sensor and rule), so both allow large records.
        big = {"max.message.bytes": str(64 * 1024 * 1024)}
        min_isr = {"min.insync.replicas": str(min(2, self.replication))}
        return [
            NewTopic(
                self.telemetry,
                self.partitions,
                self.replication,
                topic_configs={
                    "retention.ms": str(self.telemetry_retention_ms),
                    **big,
                    **min_isr,
                },
            ),
            NewTopic(
                self.alerts,
                self.partitions,
                self.replication,
                topic_configs={"retention.ms": str(self.alerts_retention_ms), **min_isr},
            ),
            NewTopic(
                self.dead_letter,
                1,
                self.replication,
                topic_configs={"retention.ms": str(self.dead_letter_retention_ms), **big},
            ),
            # Alerts re-keyed by station group (engine.runtime.corroboration).
            NewTopic(
                self.corroboration,
                self.partitions,
                self.replication,
                topic_configs={"retention.ms": str(self.alerts_retention_ms), **min_isr},
            ),
            # The corroboration tables' changelogs, as Faust would make them, but before
            # any worker writes (engine.runtime.corroboration.wire.TABLES).
            *(
                NewTopic(
                    name,
                    self.partitions,
                    self.replication,
                    topic_configs={"cleanup.policy": "compact", **min_isr},
                )
                for name in self.changelogs
            ),
            # One checkpoint partition per telemetry partition, one key each: compaction
            # keeps the latest; small segments so that compaction can run at all (the
            # active segment is never compacted).
            NewTopic(
                self.checkpoints,
                self.partitions,
                self.replication,
                topic_configs={
                    "cleanup.policy": "compact",
                    "segment.ms": str(10 * 60_000),
                    "min.cleanable.dirty.ratio": "0.1",
                    **big,
                    **min_isr,
                },
            ),
        ]


async def _describe(admin: AIOKafkaAdminClient, names: list[str]) -> list[dict[str, Any]]:
    # A topic just created shows no partitions until the metadata reaches the broker
    # that answers; ask again for a few seconds rather than report a false mismatch.
    for _ in range(40):
        described: list[dict[str, Any]] = await admin.describe_topics(names)
        if all(d.get("partitions") for d in described):
            break
        await asyncio.sleep(0.25)
    return described


async def ensure_topics(bootstrap: str, layout: TopicLayout) -> list[str]:
    """Create the missing topics; returns the names created. Raises ``TopicMismatch``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in layout.new_topics() if t.name not in existing]
        created: list[str] = []
        for topic in wanted:
            try:
                await admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass  # another worker created it between list and create
        # A batch's alerts go to the alerts partition of its number, a group's state to
        # the changelog partition of its corroboration partition: all must match.
        same = [layout.telemetry, layout.alerts, layout.corroboration, layout.checkpoints]
        for desc in await _describe(admin, [*same, *layout.changelogs]):
            n = len(desc["partitions"])
            if n != layout.partitions:
                raise TopicMismatch(
                    f"topic {desc['topic']} has {n} partitions, settings say "
                    f"{layout.partitions}: stations would move between partitions; "
                    f"use a new app_id or the existing count"
                )
        return created
    finally:
        await admin.close()

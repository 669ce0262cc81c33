"""What the embedded transport's producer and consumer share: the durable log, its
topics, the event that tells a waiting consumer a producer appended, and the commit hooks.

``engine.runtime.transport.local.Transport`` is this with Faust's producer and consumer
classes attached; they are typed against this base so that neither imports the other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from faust.transport import base
from faust.types import TP
from yarl import URL

from engine.runtime.transport.log import DurableLog

__all__ = ["CheckpointSource", "LogTransport", "log_path_from_url", "partition_for_key"]

#: Called at commit time with the offsets about to be committed; returns
#: ``{blob_name: bytes}`` to store atomically with them.
CheckpointSource = Callable[[Mapping[TP, int]], Mapping[str, bytes]]

_partitioner = DefaultPartitioner()


def partition_for_key(key: bytes, partitions: int) -> int:
    """Kafka's partition for ``key`` (murmur2), so that a key lands in the same
    partition on both transports."""
    every = list(range(partitions))
    return int(_partitioner(key, every, every))


def log_path_from_url(url: URL | str) -> Path:
    """``local:///abs/dir`` -> /abs/dir; ``local://rel/dir`` -> rel/dir."""
    url = URL(str(url))
    if url.scheme != "local":
        raise ValueError(f"not a local:// URL: {url}")
    if url.host:
        return Path(url.host + url.path)
    if not url.path or url.path == "/":
        raise ValueError(f"local:// URL needs a directory, e.g. local:///var/lib/vigil: {url}")
    return Path(url.path)


class LogTransport(base.Transport):
    """Faust transport state over a ``DurableLog`` directory (URL ``local:///dir``)."""

    driver_version = "vigil-local-1"
    default_port = 0

    def __init__(self, url: list[URL], app: Any, loop: asyncio.AbstractEventLoop | None = None):
        super().__init__(url, app, loop=loop)
        self.log = DurableLog.shared(log_path_from_url(url[0]))
        self.checkpoint_sources: list[CheckpointSource] = []
        #: Awaited before each commit: what the committed records caused is made durable.
        self.before_commit: list[Callable[[], Awaitable[None]]] = []
        self._data_event: asyncio.Event | None = None

    def ensure_topic(self, topic: str) -> int:
        """Partition count of ``topic``, creating it with the app's default if new."""
        n = self.log.partitions(topic)
        if n is None:
            self.log.create_topic(topic, int(self.app.conf.topic_partitions))
            n = self.log.partitions(topic)
        assert n is not None
        return n

    def create_topic(self, topic: str, partitions: int, **kwargs: Any) -> None:
        retention = kwargs.get("retention")
        self.log.create_topic(
            topic,
            partitions,
            retention_s=float(retention) if retention is not None else None,
            compacting=bool(kwargs.get("compacting")),
        )

    def notify_data(self) -> None:
        if self._data_event is not None:
            self._data_event.set()

    def arm_data_event(self) -> None:
        if self._data_event is None:
            self._data_event = asyncio.Event()
        self._data_event.clear()

    async def wait_for_data(self, timeout: float) -> None:
        """Wait until a producer appends, at most ``timeout`` seconds."""
        if self._data_event is None:
            self._data_event = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._data_event.wait(), timeout)

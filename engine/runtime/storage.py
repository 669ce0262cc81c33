"""The gateway's disk: measured, alerted on before it is full, and never filled by ingest.

Every ``check_interval_s`` the guard measures the data directory (every file under it)
and the free space of its filesystem, and puts the gateway in one of three states:

* **ok**;
* **warn**: the directory has reached ``warn_fraction`` of ``data_dir_max_mb``, or free
  space is under twice ``min_free_mb``: a gateway health alert ``gateway#storage``
  (yellow), through the alerts topic like every alert, and an error in the log;
* **full**: the directory has reached ``data_dir_max_mb`` or free space is under
  ``min_free_mb``: ingest pauses (``MqttIngest.pause``: it disconnects, so the broker
  keeps what devices send and redelivers what was not acknowledged) and the alert goes
  to orange. The engine goes on evaluating what is in the log; retention and the
  dead-letter cap go on freeing space.

Back under the marks, ingest resumes and the alert steps down or resolves. A disk that
fills anyway (another process) makes a write fail: the gateway exits for its supervisor
as before, and the next start finds the guard full and waits, paused, for space.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine.contracts.alerts import AlertEvent, Level, transition_event

__all__ = ["RULE_ID", "StorageGuard", "Usage", "measure"]

log = logging.getLogger(__name__)

RULE_ID = "gateway#storage"
METRIC = "data_dir_mb"
MB = 1_000_000

SendAlerts = Callable[[list[AlertEvent]], Awaitable[None]]


@dataclass(frozen=True)
class Usage:
    """What the data directory takes and what its filesystem has left, in bytes."""

    data_bytes: int
    free_bytes: int


def measure(data_dir: Path) -> Usage:
    """Walk ``data_dir`` (a few dozen files: RocksDB's, the alerts file, small state)."""
    total = 0
    for root, _, files in os.walk(data_dir):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
            except FileNotFoundError:  # RocksDB deleted it meanwhile (a compaction)
                continue
    return Usage(total, shutil.disk_usage(data_dir).free)


class Pausable(Protocol):
    """What the guard stops and restarts (``connectors.mqtt.client.MqttIngest``)."""

    def pause(self, why: str) -> None: ...

    def resume(self) -> None: ...


@dataclass(frozen=True)
class Limits:
    """The marks, in bytes (``StorageSettings``'s, converted)."""

    data_dir_max: int
    min_free: int
    warn_fraction: float


class StorageGuard:
    """Measures, alerts, pauses and resumes; see the module doc. ``send`` returns once
    the alert is durable; ``measure`` is replaceable for tests of the decisions."""

    def __init__(
        self,
        *,
        data_dir: Path,
        limits: Limits,
        gateway: str,
        ingest: Pausable,
        send: SendAlerts | None = None,
        measure: Callable[[Path], Usage] = measure,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.data_dir = data_dir
        self.limits = limits
        self.gateway = gateway
        self._ingest = ingest
        self._send = send
        self._measure = measure
        self._clock = clock
        self.level = Level.NONE
        self._since = 0
        self.usage: Usage | None = None

    def level_for(self, usage: Usage) -> Level:
        """NONE (ok), YELLOW (warn) or ORANGE (full, ingest paused)."""
        lim = self.limits
        if usage.data_bytes >= lim.data_dir_max or usage.free_bytes < lim.min_free:
            return Level.ORANGE
        if (
            usage.data_bytes >= lim.warn_fraction * lim.data_dir_max
            or usage.free_bytes < 2 * lim.min_free
        ):
            return Level.YELLOW
        return Level.NONE

    async def check(self) -> None:
        """Measure once and act on it; call at start, before ingest starts, then often."""
        usage = await asyncio.to_thread(self._measure, self.data_dir)
        self.usage = usage
        level = self.level_for(usage)
        if level is Level.ORANGE:
            self._ingest.pause(self._describe(usage))
        else:
            self._ingest.resume()
        if level is self.level:
            return
        previous, now = self.level, self._clock()
        if previous is Level.NONE:
            self._since = now
        if level is Level.NONE:
            log.warning("storage back under its marks: %s", self._describe(usage))
        else:
            log.error(
                "storage %s: %s", "full" if level is Level.ORANGE else "low", self._describe(usage)
            )
        self.level = level
        await self._emit(level, previous, now, usage)

    def _describe(self, usage: Usage) -> str:
        lim = self.limits
        return (
            f"data directory {self.data_dir} takes {usage.data_bytes / MB:.1f} MB of "
            f"{lim.data_dir_max / MB:.1f} MB allowed (storage.data_dir_max_mb); "
            f"{usage.free_bytes / MB:.1f} MB free on its filesystem, ingest pauses under "
            f"{lim.min_free / MB:.1f} MB (storage.min_free_mb)"
        )

    async def _emit(self, level: Level, previous: Level, at: int, usage: Usage) -> None:
        if self._send is None:
            return
        state = {
            Level.ORANGE: "storage full, ingest paused (the broker keeps the messages)",
            Level.YELLOW: "storage nearly full",
        }.get(level, "storage back to normal")
        summary = f"gateway {self.gateway}: {state}: "
        labels = {
            "health": "storage",
            "data_dir": str(self.data_dir),
            "free_mb": f"{usage.free_bytes / MB:.1f}",
        }
        event = transition_event(
            RULE_ID, self.gateway, METRIC, level, previous, self._since, at,
            round(usage.data_bytes / MB, 1), self.limits.data_dir_max / MB,
            summary + self._describe(usage), labels,
        )  # fmt: skip
        await self._send([event])

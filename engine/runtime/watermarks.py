"""When a telemetry partition's watermark goes down the alerts topic.

The basin rules wait for every partition's watermark (``engine.evaluation.corroboration_buffer``),
so each partition's must keep moving downstream, but not as a record per batch: Faust
costs ~0.5-1 ms of event-loop time per record it consumes (``bench/KAFKA_RESULTS.md``).
A watermark rides on the alerts record a batch sends anyway (as the header
``engine.contracts.alerts.WATERMARK_HEADER``); a batch without alerts sends it alone at most once
per ``interval_s`` of wall time, and one held back by that is sent by a timer
(``due``), so that a partition's last watermark also arrives.

A watermark is marked sent only once the records before it are with the producer, so a
mark never overtakes the alerts it vouches for.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["MarkThrottle"]

NEVER = float("-inf")


class MarkThrottle:
    """Per partition: the watermark (ms) last sent and when (wall s), the one due."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._sent: dict[int, tuple[int, float]] = {}
        self._due: dict[int, int] = {}

    def to_send(self, partition: int, watermark: int, piggyback: bool) -> int | None:
        """The watermark to send now with the partition's next record, or None:
        always on a record that goes anyway (``piggyback``), alone at most once per
        ``interval_s``; never one not newer than the last sent."""
        sent, when = self._sent.get(partition, (None, NEVER))
        if sent is not None and watermark <= sent:
            return None
        if piggyback or self.clock() - when >= self.interval_s:
            return watermark
        return None

    def sent(self, partition: int, mark: int) -> None:
        """``mark`` is with the producer, behind the records before it."""
        last = self._sent.get(partition)
        if last is None or mark >= last[0]:
            self._sent[partition] = (mark, self.clock())
        if self._due.get(partition, mark) <= mark:
            self._due.pop(partition, None)

    def hold(self, partition: int, watermark: int) -> None:
        """The partition's records up to ``watermark`` are with the producer, but the
        watermark was not sent (throttled): ``due`` offers it later."""
        last = self._sent.get(partition)
        if (last is None or watermark > last[0]) and watermark > self._due.get(partition, NEVER):
            self._due[partition] = watermark

    def due(self) -> dict[int, int]:
        """Partition -> a held watermark that may be sent alone now."""
        return {p: w for p, w in self._due.items() if self.to_send(p, w, piggyback=False) == w}

    def forget(self, partition: int) -> None:
        """The partition left this worker: nothing of it is due here any more."""
        self._due.pop(partition, None)

"""Wall time for a partition that gets no readings, from the ticks in its log.

Silence is judged in event time (``engine.evaluation.kernels.health``): a sensor is silent once the
partition's watermark is ``stale`` past its last reading. Only readings move the
watermark, so a partition whose every sensor stops (a gateway down, a quiet partition)
would never see its sensors fall silent. The topology writes the wall clock into each
telemetry partition as ticks (``engine.contracts.batch.Tick``); ``IdleClock`` turns them into how
long the partition's event time has stood still, and the processor checks silence at
the watermark extrapolated by that time (``PartitionProcessor.on_tick``).

Wall time comes from the log, not from a timer beside the agents, so evaluation stays a
function of the log: a restart that replays from a checkpoint finds the same silences.

Idle time is the sum of the gaps between the ticks seen since the watermark last moved,
counted from the first tick after it moved, each gap at most two tick intervals: a
longer one is a writer that was down or stalled, not time watched (a gateway restarted
after an hour must not find every gauge silent at once, before its broker has
redelivered what the devices sent meanwhile).
"""

from __future__ import annotations

from typing import Any

from engine.contracts.batch import Tick

__all__ = ["IdleClock"]

#: A gap between two ticks counts up to this many tick intervals.
MAX_GAP_TICKS = 2


class IdleClock:
    """How long (wall ms) a partition's watermark has stood still, as its ticks tell."""

    def __init__(self) -> None:
        self.watermark: int | None = None  # the watermark the idle time is counted at
        self.idle_ms = 0
        self.last_tick_ms: int | None = None

    def tick(self, watermark: int, tick: Tick) -> int:
        """Take a tick seen at ``watermark`` (ms); returns the idle time (ms) since the
        watermark last moved, 0 when it moved since the previous tick."""
        if watermark != self.watermark or self.last_tick_ms is None:
            self.watermark, self.idle_ms = watermark, 0
        else:
            gap = max(0, tick.wall_ms - self.last_tick_ms)  # a clock set back: no time
            self.idle_ms += min(gap, MAX_GAP_TICKS * tick.every_ms)
        self.last_tick_ms = tick.wall_ms
        return self.idle_ms

    def snapshot(self) -> list[Any]:
        return [self.watermark, self.idle_ms, self.last_tick_ms]

    def restore(self, saved: list[Any] | None) -> None:
        """Load ``snapshot()``; None (a checkpoint from before ticks) starts afresh."""
        watermark, idle_ms, last_tick_ms = saved if saved is not None else (None, 0, None)
        self.watermark, self.idle_ms, self.last_tick_ms = watermark, idle_ms, last_tick_ms

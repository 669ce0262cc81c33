"""Event-time order for the basin rules: routed events held until every partition has
passed them.

The stations of a group live in different telemetry partitions, which reach the
corroboration stage at their own pace (a lagging worker, a partition replayed after a
failover). A group's state depends on the order of its stations' entries and leaves,
so ``GroupState`` must take them in event time, the order ``vigil replay`` uses
(``engine.evaluation.corroboration.event_order``), not in arrival order.

Each telemetry partition's watermark (``PartitionProcessor.watermark``: the newest event
time it has evaluated, ms) travels behind its alerts: on the alerts record of each
batch, then on the corroboration records (``engine.runtime.corroboration``). A source
partition's mark therefore arrives after every event that partition routed before it.
An ``EventTimeBuffer`` (one per corroboration partition) holds the routed events and
releases them in the order ``(at, rule, group, station)`` once ``at`` is at most the
**horizon**:

    horizon = min over active source partitions of their watermark - allowance_ms - 1

* ``allowance_ms`` is the engine's ``lateness_ms``: a reading may reach its partition
  that much behind the partition's newest (a device's jitter), and its alert is then
  still taken in order. Live, event time runs with the wall clock, so a basin alert
  is decided about ``allowance_ms`` after the event that makes it (the cost, stated in
  the README).
* A source partition is **idle** when its watermark has not advanced for ``idle_s``
  seconds of wall time (also one never heard of, counting from the buffer's
  creation): it is left out of the minimum, so that a partition without stations, or
  whose stations all fell silent, does not hold every basin alert back forever (a
  missed alert). When every source is idle, everything held is released. So no event
  waits longer than ``idle_s`` (plus the marks' and ticks' intervals) behind a source
  that has nothing more to say.
* What the horizon cannot cover is released when it arrives, first of all: an event
  at or below what was already released (``late``): the alert of a gauge's
  store-and-forward backlog older than the allowance, or of a partition that lagged
  for longer than ``idle_s`` (a worker dead for longer than that before its partitions
  move). Such events are counted, and their groups put them in their place in event
  time from a bounded history (``GroupState.take_all``, which states what that cannot
  do).

Watermarks only grow (``mark`` keeps the largest), since a partition replayed after a
failover sends its older marks again. The buffer keeps no I/O and reads the wall clock
through ``clock`` (seconds, monotonic), which tests advance.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

__all__ = ["EventTimeBuffer", "Pending"]

#: A held event's place in the order of application: (at ms, rule id, group, station).
#: Within one (rule, group) this is (at, station), the order of ``event_order``.
Pending = tuple[int, str, str, str]

#: Horizon when every source is idle: nothing routed is newer than this.
END_OF_TIME = 2**62


class EventTimeBuffer:
    """The routed events of one corroboration partition, released in event time.

    ``sources``: the number of telemetry partitions whose marks it waits for.
    ``allowance_ms``: how far behind its partition's watermark an event may still
    arrive in order. ``idle_s``: wall seconds without an advance after which a source
    no longer holds the horizon back.
    """

    def __init__(
        self,
        sources: int,
        allowance_ms: int,
        idle_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sources = sources
        self.allowance_ms = allowance_ms
        self.idle_s = idle_s
        self.clock = clock
        #: Source partition -> the largest watermark (ms) it has sent.
        self.watermarks: dict[int, int] = {}
        now = clock()
        #: Source partition -> wall time (s) its watermark last advanced.
        self._advanced = dict.fromkeys(range(sources), now)
        self._heap: list[Pending] = []
        self._payload: dict[Pending, tuple[str, str]] = {}
        #: The highest ``at`` released so far (ms): an event at or below it is late.
        self.released_to: int | None = None
        self.late = 0

    def __len__(self) -> int:
        return len(self._heap)

    def mark(self, source: int, watermark: int) -> None:
        """Source partition ``source`` has routed every event up to ``watermark`` (ms)."""
        if watermark > self.watermarks.get(source, watermark - 1):
            self.watermarks[source] = watermark
            self._advanced[source] = self.clock()

    def add(self, key: Pending, payload: tuple[str, str]) -> bool:
        """Hold an event (``payload``: its level and metric); False if already held."""
        if key in self._payload:
            return False
        if self.released_to is not None and key[0] <= self.released_to:
            self.late += 1  # taken at the next release, first of all: arrival order
        self._payload[key] = payload
        heapq.heappush(self._heap, key)
        return True

    def clear(self) -> None:
        """Forget the held events (they are rebuilt from the table); marks stay."""
        self._heap.clear()
        self._payload.clear()
        self.released_to = None

    def _active(self, now: float) -> list[int]:
        return [p for p, t in self._advanced.items() if now - t < self.idle_s]

    def horizon(self) -> int:
        """Events at or below this (ms) may be applied now."""
        active = self._active(self.clock())
        if not active:
            return END_OF_TIME
        lowest = min(self.watermarks.get(p, -END_OF_TIME) for p in active)
        # A source's later events may still be at its watermark itself (another
        # station's reading of the same millisecond): only what is older is safe.
        return lowest - self.allowance_ms - 1

    def pop_due(self, horizon: int) -> tuple[Pending, tuple[str, str]] | None:
        """The next held event at or below ``horizon``, removed; None when there is none."""
        if not self._heap or self._heap[0][0] > horizon:
            return None
        key = heapq.heappop(self._heap)
        if self.released_to is None or key[0] > self.released_to:
            self.released_to = key[0]
        return key, self._payload.pop(key)

    def wake_at(self, now: float | None = None) -> float | None:
        """Wall time (s) at which an idle source may let a held event go, ``now`` (the
        caller's clock reading, s) when nothing blocks any more; None if nothing is
        held. Before that, only a new mark can release anything."""
        if not self._heap:
            return None
        now = self.clock() if now is None else now
        blocking = [
            self._advanced[p]
            for p in self._active(now)
            if self.watermarks.get(p, -END_OF_TIME) - self.allowance_ms <= self._heap[0][0]
        ]
        return min(blocking) + self.idle_s if blocking else now

"""The dispatcher: alert events from the ``alerts`` topic to people, once each.

Events are deduplicated by their idempotency key ``(fingerprint, at, level)``: a transition
that the topology re-emits after a crash (it replays from its checkpoint) is dropped
here. The set of seen keys is seeded from sinks that hold their deliveries durably.
A sink that fails is retried with backoff; its failure never blocks the other sinks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Sequence

from connectors.sinks.base import Sink
from engine.contracts.alerts import AlertEvent

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)


class Dispatcher:
    """Delivers each new event to every sink; drops events already delivered."""

    def __init__(self, sinks: Sequence[Sink], *, remember: int = 100_000, retries: int = 3) -> None:
        self.sinks = tuple(sinks)
        self.retries = retries
        self.counters: Counter[str] = Counter()
        self._remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()
        for sink in self.sinks:
            for key in sink.delivered_keys():
                self._mark(key)

    def _mark(self, key: str) -> None:
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)

    async def dispatch(self, event: AlertEvent) -> bool:
        """Deliver ``event``; returns False if it was a duplicate."""
        return bool(await self.dispatch_many([event]))

    async def dispatch_many(self, events: Sequence[AlertEvent]) -> list[AlertEvent]:
        """Deliver the events not delivered before, in order; returns them.

        Each sink takes them one after the other; the sinks run side by side, so a
        slow or failing one does not hold up the others.
        """
        fresh: list[AlertEvent] = []
        keys: set[str] = set()  # a repeat within ``events`` is a duplicate too
        for event in events:
            if event.key in self._seen or event.key in keys:
                self.counters["duplicates"] += 1
                continue
            keys.add(event.key)
            fresh.append(event)
        if fresh:
            await asyncio.gather(*(self._deliver_all(sink, fresh) for sink in self.sinks))
            for event in fresh:  # only once delivered: an interrupted record comes again
                self._mark(event.key)
            self.counters["delivered"] += len(fresh)
        return fresh

    async def _deliver_all(self, sink: Sink, events: Sequence[AlertEvent]) -> None:
        for event in events:
            await self._deliver(sink, event)

    async def _deliver(self, sink: Sink, event: AlertEvent) -> None:
        for attempt in range(self.retries + 1):
            try:
                await sink.deliver(event)
                return
            except Exception:
                self.counters[f"failed.{sink.name}"] += 1
                if attempt == self.retries:
                    log.exception("sink %s gave up on alert %s", sink.name, event.key)
                    return
                await asyncio.sleep(0.5 * 2**attempt)

    def flush(self) -> None:
        """Make what the sinks delivered durable (before the alerts' offsets commit)."""
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

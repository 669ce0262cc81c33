"""The sink contract.

``deliver`` is called once per new alert event, in order per alert series; it must
raise on failure (the dispatcher retries and counts) and must be safe to call again with
the same event (delivery is at least once; the dispatcher's dedupe makes it exactly once
in the normal case). ``flush`` makes what was delivered durable; the topology calls it
before it commits the offsets of the alerts delivered, so a sink may defer its fsync
until then (a crash before the commit redelivers). ``close`` may not be called if the
process dies.
"""

from __future__ import annotations

from typing import Protocol

from engine.contracts.alerts import AlertEvent

__all__ = ["Sink"]


class Sink(Protocol):
    name: str

    async def deliver(self, event: AlertEvent) -> None: ...

    def flush(self) -> None:
        """Make every event delivered so far durable; raises if it cannot."""
        ...

    def delivered_keys(self) -> set[str]:
        """Idempotency keys this sink already holds durably (empty if it cannot know)."""
        ...

    def close(self) -> None: ...

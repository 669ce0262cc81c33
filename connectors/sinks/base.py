"""The sink contract.

``deliver`` is called once per new alert event, in order per alert series; it must
raise on failure (the dispatcher retries and counts) and must be safe to call again with
the same event (delivery is at least once; the dispatcher's dedupe makes it exactly once
in the normal case). ``close`` may not be called if the process dies.
"""

from __future__ import annotations

from typing import Protocol

from engine.alerts import AlertEvent

__all__ = ["Sink"]


class Sink(Protocol):
    name: str

    async def deliver(self, event: AlertEvent) -> None: ...

    def delivered_keys(self) -> set[str]:
        """Idempotency keys this sink already holds durably (empty if it cannot know)."""
        ...

    def close(self) -> None: ...

"""What the corroboration stage needs of the topology that runs it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from engine.contracts.ruleset import RuleSet
from engine.runtime.sending import Outgoing

__all__ = ["StageHost"]


class StageHost(Protocol):
    """The topology, as the stage sees it (``engine.runtime.topology.Topology``)."""

    app: Any  # the Faust app
    alerts: Any  # the ``<id>-alerts`` topic, where group alerts go
    partitions: int
    ruleset: RuleSet
    counters: Counter[str]
    lateness_ms: int
    corroboration_idle_s: float
    corroboration_history_s: float

    def partition_for(self, key: str) -> int: ...

    async def hand_over(self, records: Sequence[Outgoing]) -> list[asyncio.Future[Any]]:
        """Records to the producer in one loop turn; their futures
        (``engine.runtime.sending.Sending.hand_over``)."""
        ...

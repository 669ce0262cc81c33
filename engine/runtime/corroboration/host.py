"""What the corroboration stage needs of the topology that runs it."""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

from engine.contracts.ruleset import RuleSet

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

    def partition_for(self, key: str) -> int: ...

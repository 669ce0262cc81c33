"""Unknown devices, counted per identity in bounded memory, for the operator's question
"which devices are sending but not registered?" without a log line per message."""

from __future__ import annotations

from collections import Counter

__all__ = ["UnknownDevices"]


class UnknownDevices:
    """Messages per unregistered identity: exact for the first ``capacity`` identities
    seen, the rest counted together in ``untracked`` (memory stays bounded however many
    identities a misconfigured fleet or a scanner sends)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self.counts: Counter[str] = Counter()
        self.untracked = 0

    def add(self, identity: str) -> None:
        identity = identity[:64]  # a device's claim, bounded like any input
        if identity in self.counts or len(self.counts) < self.capacity:
            self.counts[identity] += 1
        else:
            self.untracked += 1

    def top(self, n: int = 10) -> list[tuple[str, int]]:
        return self.counts.most_common(n)

    def summary(self, n: int = 10) -> str:
        """One line: how many identities, and the busiest."""
        top = ", ".join(f"{i} ({c})" for i, c in self.top(n))
        more = f"; {self.untracked} messages from further identities" if self.untracked else ""
        return f"{len(self.counts)} unregistered identities, top: {top}{more}"

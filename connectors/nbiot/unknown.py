"""Unknown devices, counted per identity in bounded memory, for the operator's question
"which devices are sending but not registered?" without a log line per message. The
same bounded count serves the readings admission refuses (``connectors.nbiot.uplink``:
a device whose station the station registry does not have, a metric its station does
not report), keyed by what was refused."""

from __future__ import annotations

from collections import Counter

__all__ = ["UnknownDevices"]


class UnknownDevices:
    """Messages per unregistered identity: exact for the first ``capacity`` identities
    seen, the rest counted together in ``untracked`` (memory stays bounded however many
    identities a misconfigured fleet or a scanner sends)."""

    def __init__(self, capacity: int = 10_000, what: str = "unregistered identities") -> None:
        self.capacity = capacity
        #: What the keys are, for ``summary``.
        self.what = what
        self.counts: Counter[str] = Counter()
        self.untracked = 0

    def add(self, identity: str, n: int = 1) -> int:
        """Count ``n`` messages of ``identity``; returns its count now (0: untracked)."""
        identity = identity[:64]  # a device's claim, bounded like any input
        if identity in self.counts or len(self.counts) < self.capacity:
            self.counts[identity] += n
            return self.counts[identity]
        self.untracked += n
        return 0

    def top(self, n: int = 10) -> list[tuple[str, int]]:
        return self.counts.most_common(n)

    def summary(self, n: int = 10) -> str:
        """One line: how many identities, and the busiest."""
        top = ", ".join(f"{i} ({c})" for i, c in self.top(n))
        more = f"; {self.untracked} more, not tracked one by one" if self.untracked else ""
        return f"{len(self.counts)} {self.what}, top: {top}{more}"

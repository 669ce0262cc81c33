"""The offset fence: which fetched record of a contiguous topic to deliver, in offset
order per partition. Bookkeeping only, no I/O: ``engine.runtime.kafka.consumer`` acts on
its verdicts (seeks, logs) and its module docstring says why Vigil needs it.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Mapping

__all__ = ["OffsetFence", "Verdict"]


class Verdict(enum.Enum):
    """What to do with a fetched record (``OffsetFence.admit``)."""

    DELIVER = "deliver"
    HOLE = "hole"  # deliver; the offsets before it are gone from the log (``holes``)
    DROP = "drop"  # stale; say nothing
    REWIND = "rewind"  # stale; seek the partition back to ``OffsetFence.expected``


class OffsetFence:
    """In-order delivery per partition: the bookkeeping of ``FencedConsumer``, no I/O.

    ``positioning`` before and ``positioned`` after each seek to the committed offsets
    (it names the partitions to seek there once more), ``seeked`` after a seek of
    one partition, ``revoked`` when partitions leave; ``admit`` for each record, in
    fetch order, ``rewound`` once a REWIND has been acted on, and ``undelivered`` for a
    record admitted whose delivery to the stream did not complete (before the next
    record is admitted).
    """

    def __init__(self) -> None:
        #: Partition -> the offset it must deliver next (absent: take what comes).
        self.expected: dict[Hashable, int] = {}
        #: Partitions rewound after a skip ahead, with the offset they were rewound to.
        self._rewound: dict[Hashable, int] = {}
        #: Partitions positioned since their assignment; records of others are dropped.
        self._positioned: set[Hashable] = set()
        #: Partitions with records dropped since ``positioning`` (not yet positioned).
        self._dropped: set[Hashable] = set()
        #: Partition -> the offset it was positioned at (its committed offset).
        self.start: dict[Hashable, int] = {}
        #: Partition -> the last run of offsets found gone from the log, (first, last).
        self.holes: dict[Hashable, tuple[int, int]] = {}

    def positioning(self) -> None:
        """A seek of every partition to its committed offset begins."""
        self._dropped.clear()

    def positioned(self, partitions: Mapping[Hashable, int | None]) -> set[Hashable]:
        """Every fenced partition was sought to its committed offset (None: none yet).

        Returns those to seek to it once more: records of theirs were dropped since
        ``positioning``, and may have been fetched from that offset after the seek. A
        partition given None takes what comes (``FencedConsumer`` gives a partition
        never committed the start of its log instead).
        """
        self.expected = {tp: off for tp, off in partitions.items() if off is not None}
        self.start = dict(self.expected)
        self._rewound.clear()
        self._positioned = set(partitions)
        again = self._dropped & self.expected.keys()
        self._dropped.clear()
        return again

    def seeked(self, tp: Hashable, offset: int) -> None:
        if tp in self._positioned:
            self.expected[tp] = offset

    def revoked(self, partitions: Iterable[Hashable]) -> None:
        for tp in partitions:
            self.expected.pop(tp, None)
            self.start.pop(tp, None)
            self._rewound.pop(tp, None)
            self._positioned.discard(tp)

    def admit(self, tp: Hashable, offset: int) -> Verdict:
        """The verdict on the record at ``offset`` of fenced partition ``tp``."""
        if tp not in self._positioned:
            self._dropped.add(tp)
            return Verdict.DROP  # fetched from where the last generation stood, or early
        expected = self.expected.get(tp)
        if expected is not None and offset > expected:
            if self._rewound.get(tp) != expected:
                return Verdict.REWIND
            # The first record since the rewind to ``expected`` is still beyond it:
            # the offsets in between are gone from the log.
            self.holes[tp] = (expected, offset - 1)
            self._rewound.pop(tp, None)
            self.expected[tp] = offset + 1
            return Verdict.HOLE
        self._rewound.pop(tp, None)
        if expected is None or offset >= expected:
            self.expected[tp] = offset + 1
        return Verdict.DELIVER

    def rewound(self, tp: Hashable) -> None:
        """The partition was sought back to ``expected[tp]`` after a REWIND."""
        self._rewound[tp] = self.expected[tp]

    def undelivered(self, tp: Hashable, offset: int) -> bool:
        """The record at ``offset``, just admitted, never reached the stream.

        Returns whether the partition must be sought back to ``offset``: when that
        record was the one to deliver next, it is again (``expected``). Otherwise it was
        a repeat of one delivered before, or the partition was revoked or positioned
        anew since it was admitted (the positioning decides what comes next).
        """
        if self.expected.get(tp) != offset + 1:
            return False
        self.expected[tp] = offset
        # Not a rewind past a gap: should a record beyond ``offset`` come first now, it
        # is rewound for again rather than taken for a hole (``offset`` was just read).
        self._rewound.pop(tp, None)
        return True

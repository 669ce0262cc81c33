"""At-least-once input counted once; readings too late for their window rejected with
a reason (the topology sends them to dead-letter)."""

from __future__ import annotations

import numpy as np

from engine.contracts.batch import TelemetryBatch
from engine.contracts.ruleset import RuleSet, ThresholdRule
from engine.evaluation.processor import PartitionProcessor

M = 60_000
THR = np.array([[10.0, 20.0, 30.0, 40.0]] * 2)


def _rule(aggregate: str) -> ThresholdRule:
    return ThresholdRule("rain", "rainfall", ("A", "B"), THR, window_ms=60 * M,
                         aggregate=aggregate)  # type: ignore[arg-type]  # fmt: skip


def _b(rows: list[tuple[str, int, float]]) -> TelemetryBatch:
    return TelemetryBatch.from_rows([(s, "rainfall", t, v) for s, t, v in rows])


def test_redelivered_readings_do_not_count_twice_in_a_sum() -> None:
    proc = PartitionProcessor(RuleSet((_rule("sum"),)), lateness_ms=0)
    first = [("A", k * 5 * M, 1.0) for k in range(6)]
    proc.process(_b(first), 0)
    proc.process(_b(first[3:]), 1)  # the tail again, as a broker redelivers it
    proc.process(_b([("A", 30 * M + k * 5 * M, 1.0) for k in range(6)]), 2)
    assert proc.accepted("rain", "A") == 12
    assert proc.rejected == []


def test_a_reading_one_place_out_of_order_counts_in_a_sum() -> None:
    """Not mistaken for a redelivery: it was never counted (it used to be dropped)."""
    proc = PartitionProcessor(RuleSet((_rule("sum"),)), lateness_ms=10 * M)
    rows = [("A", k * 5 * M, 4.0) for k in range(6)]
    for offset, row in enumerate([*rows[:3], rows[4], rows[3], rows[5]]):
        proc.process(_b([row]), offset)
    assert proc.accepted("rain", "A") == 6 and proc.rejected == []


def test_a_reading_for_a_closed_window_is_rejected_with_the_reason() -> None:
    """Late is late for the station itself: A's own later reading closed the hour."""
    for aggregate in ("sum", "max"):
        proc = PartitionProcessor(RuleSet((_rule(aggregate),)), lateness_ms=0)
        proc.process(_b([("A", 0, 1.0), ("B", 0, 1.0)]), 0)
        proc.process(_b([("A", 61 * M, 1.0)]), 1)  # A moves on past its first hour
        proc.process(_b([("A", 59 * M, 25.0)]), 2)  # A's reading for the closed hour
        assert [r[:4] for r in proc.rejected] == [("A", "rainfall", 59 * M, 25.0)], aggregate
        assert proc.rejected[0][4] == "late for rule rain: its 60-min window closed already"
        assert proc.accepted("rain", "A") == 2

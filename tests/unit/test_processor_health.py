"""QC and sensor health in the processor: failed readings never move a level; a stuck
or silent gauge is an alert of its own, cleared when good readings return."""

from __future__ import annotations

import numpy as np
import pytest

from engine.contracts.batch import TelemetryBatch
from engine.contracts.ruleset import QcLimits, RuleSet, ThresholdRule
from engine.evaluation.processor import PartitionProcessor

M = 60_000


def _rule(**kw: object) -> ThresholdRule:
    return ThresholdRule(
        "flood", "water_level", ("A", "B"), np.array([[1.0, 2.0, 3.0, 4.0]] * 2),
        window_ms=15 * M, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def _batch(rows: list[tuple[str, int, float]]) -> TelemetryBatch:
    return TelemetryBatch.from_rows([(s, "water_level", t, v) for s, t, v in rows])


def test_out_of_range_readings_never_raise_a_level_and_a_run_of_them_alerts() -> None:
    proc = PartitionProcessor(RuleSet((_rule(qc=QcLimits(min=-1.0, max=10.0)),)), lateness_ms=0)
    events = proc.process(_batch([("A", k * 5 * M, 99.0) for k in range(4)]), 0)
    assert [(e.rule_id, e.level, e.state, e.started_at) for e in events] == [
        ("flood#qc", "blue", "firing", 0)
    ]
    assert "failing quality control since 1970-01-01 00:00Z" in events[0].summary
    events = proc.process(_batch([("A", 20 * M, 2.5)]), 1)
    assert [(e.rule_id, e.level) for e in events] == [("flood#qc", "none"), ("flood", "yellow")]


def test_a_stuck_gauge_is_flagged_after_its_flat_run() -> None:
    proc = PartitionProcessor(RuleSet((_rule(qc=QcLimits(flat_n=4)),)), lateness_ms=0)
    events = proc.process(_batch([("A", k * 5 * M, 0.5) for k in range(8)]), 0)
    qc = [e for e in events if e.rule_id == "flood#qc"]
    assert [(e.state, e.started_at) for e in qc] == [("firing", 15 * M)]


def test_silence_is_found_by_the_partition_watermark_and_cleared_by_a_reading() -> None:
    proc = PartitionProcessor(RuleSet((_rule(stale_ms=30 * M),)), lateness_ms=0)
    proc.process(_batch([("A", 0, 0.5), ("B", 0, 0.5)]), 0)
    events = proc.process(_batch([("B", k * 10 * M, 0.5) for k in range(1, 5)]), 1)
    silent = [e for e in events if e.rule_id == "flood#silent"]
    assert [(e.station, e.state, e.at, e.started_at) for e in silent] == [
        ("A", "firing", 30 * M, 0)
    ]
    events = proc.process(_batch([("A", 45 * M, 0.5)]), 2)
    assert [(e.station, e.state, e.at) for e in events if e.rule_id == "flood#silent"] == [
        ("A", "resolved", 45 * M)
    ]


def test_health_state_survives_a_checkpoint() -> None:
    rules = RuleSet((_rule(qc=QcLimits(max=10.0)),))
    proc = PartitionProcessor(rules, lateness_ms=0)
    proc.process(_batch([("A", 0, 99.0), ("A", 5 * M, 99.0)]), 0)
    restored = PartitionProcessor(rules, lateness_ms=0)
    restored.restore(proc.snapshot())
    events = restored.process(_batch([("A", 10 * M, 99.0)]), 1)
    assert [(e.rule_id, e.state, e.started_at) for e in events] == [("flood#qc", "firing", 0)]


def test_a_clock_far_ahead_cannot_drag_the_watermark() -> None:
    now = 100 * M
    proc = PartitionProcessor(RuleSet((_rule(),)), lateness_ms=0, clock=lambda: now)
    events = proc.process(_batch([("A", 90 * M, 2.5), ("B", 10_000 * M, 2.5)]), 0)
    # B's reading failed the clock check: it neither moves event time nor raises anything.
    assert proc.watermark == 90 * M
    assert [(e.station, e.level) for e in events] == [("A", "yellow")]


@pytest.mark.parametrize(("before", "after"), [("max", "max"), ("max", "mean"), ("mean", "max")])
def test_a_reload_that_changes_the_window_keeps_each_gauges_health(before: str, after: str) -> None:
    """The new window's runner takes over QC and health by station: A's firing QC alert
    still clears on A's next good reading (max: the one-pass kernel; mean: the chain)."""
    qc = QcLimits(max=10.0)

    def rule(window_ms: int, aggregate: str) -> ThresholdRule:
        return ThresholdRule(
            "flood", "water_level", ("A", "B"), np.array([[1.0, 2.0, 3.0, 4.0]] * 2),
            window_ms=window_ms, aggregate=aggregate, qc=qc,  # type: ignore[arg-type]
        )  # fmt: skip

    proc = PartitionProcessor(RuleSet((rule(15 * M, before),)), lateness_ms=0)
    first = proc.process(_batch([("B", 0, 0.5), *[("A", k * 5 * M, 99.0) for k in range(3)]]), 0)
    assert [(e.station, e.state) for e in first if e.rule_id == "flood#qc"] == [("A", "firing")]
    proc.swap_rules(RuleSet((rule(30 * M, after),)))
    events = proc.process(_batch([("A", 20 * M, 0.5), ("B", 20 * M, 99.0)]), 1)
    assert [(e.station, e.state, e.started_at) for e in events if e.rule_id == "flood#qc"] == [
        ("A", "resolved", 0)
    ]

"""Retention of the embedded log: old records go, records a reader still needs stay."""

from __future__ import annotations

from pathlib import Path

from engine.runtime.transport.log import Append, DurableLog
from engine.runtime.transport.retention import enforce_retention

HOUR = 3_600_000


def _fill(log: DurableLog, topic: str, partitions: int, hours: int, **config: object) -> None:
    """One record per hour on each partition, appended at 0 h, 1 h, ... (hours - 1) h."""
    log.create_topic(topic, partitions, **config)
    log.append(
        [
            Append(topic, p, None, f"{p}:{h}".encode(), h * HOUR)
            for h in range(hours)
            for p in range(partitions)
        ]
    )


def test_first_offset_since_finds_the_first_record_that_young(tmp_path: Path) -> None:
    log = DurableLog(tmp_path)
    _fill(log, "t", 1, 10)
    assert log.first_offset_since("t", 0, 0) == 0
    assert log.first_offset_since("t", 0, 4 * HOUR) == 4
    assert log.first_offset_since("t", 0, 4 * HOUR - 1) == 4
    assert log.first_offset_since("t", 0, 4 * HOUR + 1) == 5
    assert log.first_offset_since("t", 0, 99 * HOUR) == 10  # none: the highwater
    log.trim("t", 0, 6)
    assert log.first_offset_since("t", 0, 0) == 6
    log.create_topic("empty", 1)
    assert log.first_offset_since("empty", 0, 0) == 0


def test_records_past_retention_go_when_no_group_reads_them(tmp_path: Path) -> None:
    log = DurableLog(tmp_path)
    _fill(log, "dead-letter", 1, 10)
    deleted = enforce_retention(log, retention_ms=3 * HOUR, now_ms=10 * HOUR)
    assert deleted == 7
    assert [r.value for r in log.read("dead-letter", 0, 0, 100)] == [b"0:7", b"0:8", b"0:9"]
    assert enforce_retention(log, retention_ms=3 * HOUR, now_ms=10 * HOUR) == 0


def test_nothing_at_or_above_a_readers_committed_offset_is_deleted(tmp_path: Path) -> None:
    log = DurableLog(tmp_path)
    _fill(log, "telemetry", 3, 10)
    log.commit("gateway", {("telemetry", 0): 2, ("telemetry", 1): 9})  # partition 2: never
    log.commit("other", {("telemetry", 0): 4, ("telemetry", 1): 5})
    enforce_retention(log, retention_ms=HOUR, now_ms=100 * HOUR)  # every record is old
    assert log.earliest("telemetry", 0) == 2
    assert log.earliest("telemetry", 1) == 5  # the slower of the two groups
    assert log.earliest("telemetry", 2) == 0  # the readers have not started on it


def test_compacted_topics_are_never_trimmed_by_age(tmp_path: Path) -> None:
    log = DurableLog(tmp_path)
    _fill(log, "table-changelog", 1, 10, compacting=True)
    assert enforce_retention(log, retention_ms=HOUR, now_ms=100 * HOUR) == 0
    assert log.earliest("table-changelog", 0) == 0

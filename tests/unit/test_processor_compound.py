"""Compound rules in the processor: the flood pack's "above warning level AND more than
20 mm of rain in 1 h" at one station, with its 10-minute for-duration."""

from __future__ import annotations

from pathlib import Path

import pytest

import rules
from engine.contracts.batch import TelemetryBatch
from engine.evaluation.compound import CompoundState
from engine.evaluation.processor import PartitionProcessor
from rules.api import load_ruleset

PACKS = Path(rules.__file__).resolve().parent / "packs"
M = 60_000
H = 60 * M


@pytest.fixture(scope="module")
def flood():  # type: ignore[no-untyped-def]
    return load_ruleset([PACKS / "flood.yaml"], PACKS / "demo_stations.yaml", "en").ruleset


def _compound(events: list) -> list[tuple[str, str, str, int]]:  # type: ignore[type-arg]
    return [
        (e.station, e.previous_level, e.level, e.at)
        for e in events
        if e.rule_id == "flood.level_with_rain"
    ]


def test_both_clauses_for_ten_minutes_raise_orange_and_clear_when_one_stops(flood) -> None:  # type: ignore[no-untyped-def]
    (compound,) = flood.compound
    proc = PartitionProcessor(flood, lateness_ms=0)
    events = []
    # HZ001 warning level is 4.50 m. Rain: 30 mm in the hour [0, 1 h); the 1-h window
    # closes at 1 h. Level above warning from 40 min on.
    rows = [("HZ001", "rainfall", k * 5 * M, 2.5) for k in range(12)]
    rows += [("HZ001", "water_level", k * 5 * M, 4.0 if k < 8 else 4.8) for k in range(16)]
    for offset, row in enumerate(sorted(rows, key=lambda r: r[2])):
        events += proc.process(TelemetryBatch.from_rows([row]), offset)
    # Rain's hour closes with the first reading at or after 1 h; both hold from then.
    fired = _compound(events)
    assert fired == [("HZ001", "none", "orange", H + compound.for_ms)]
    assert events[[e.rule_id for e in events].index("flood.level_with_rain")].summary.startswith(
        "示例一号站 Demo gauge 1 (HZ001) above warning level"
    )
    # The next hour is dry: its window closes at 2 h (the gauge's 2 h report: a gauge
    # only silent when the watermark passes might still send the hour's rain) and the
    # rain clause stops holding.
    later = [("HZ001", "water_level", H + k * 5 * M, 4.8) for k in range(4, 13)]
    later += [("HZ001", "rainfall", H + k * 5 * M, 0.0) for k in range(13)]
    for offset, row in enumerate(sorted(later, key=lambda r: r[2]), start=100):
        events += proc.process(TelemetryBatch.from_rows([row]), offset)
    assert _compound(events)[1:] == [("HZ001", "orange", "none", 2 * H)]
    # The clauses are internal: no alert carries their ids.
    assert not [e for e in events if "~" in e.rule_id]


def test_a_combination_that_holds_past_its_for_and_stops_in_one_batch_still_fires(flood) -> None:  # type: ignore[no-untyped-def]
    """The for-duration is event time, not batch time: holding from 1 h to 2 h fires
    at 1 h + for whether the readings come one per batch or all in one."""
    rows = [("HZ001", "rainfall", k * 5 * M, 2.5) for k in range(12)]
    rows += [("HZ001", "rainfall", H + k * 5 * M, 0.0) for k in range(13)]
    rows += [("HZ001", "water_level", k * 5 * M, 4.0 if k < 8 else 4.8) for k in range(26)]
    rows.sort(key=lambda r: r[2])
    one_by_one = []
    proc = PartitionProcessor(flood, lateness_ms=0)
    for offset, row in enumerate(rows):
        one_by_one += proc.process(TelemetryBatch.from_rows([row]), offset)
    at_once = PartitionProcessor(flood, lateness_ms=0).process(TelemetryBatch.from_rows(rows), 0)
    (compound,) = flood.compound
    expected = [
        ("HZ001", "none", "orange", H + compound.for_ms),
        ("HZ001", "orange", "none", 2 * H),
    ]
    assert _compound(one_by_one) == expected
    assert _compound(at_once) == expected


def test_a_combination_revealed_by_a_clause_decided_later_still_fires(flood) -> None:  # type: ignore[no-untyped-def]
    """The level clause rises at 0:55 and falls at 1:45 before the rain clause, decided
    later, tells that it held from 1:00: the combination held 45 min, it fires at
    1:00 + for and clears at 1:45, as an event-time replay has it."""
    (compound,) = flood.compound
    state = CompoundState(compound)
    level, rain = 0, 1  # the flood pack's clause order: water level, then rain
    assert state.clause("HZ001", level, True, 55 * M) == []
    assert state.clause("HZ001", level, False, 105 * M) == []
    changes = state.clause("HZ001", rain, True, 60 * M)
    assert [(c.firing, c.at, c.since) for c in changes] == [
        (True, 60 * M + compound.for_ms, 60 * M),
        (False, 105 * M, 60 * M),
    ]
    # Nothing fires twice when the rain clause's fall comes in too.
    assert state.clause("HZ001", rain, False, 120 * M) == []

"""Derived metrics from the dam pack: piezometric level from pore pressure, and the
seepage-pressure residual against the reservoir level, through the rules."""

from __future__ import annotations

from pathlib import Path

import pytest

import rules
from engine.contracts.batch import TelemetryBatch
from engine.evaluation.processor import PartitionProcessor
from engine.tools.replay import computed_values
from rules.api import load_ruleset

PACKS = Path(rules.__file__).resolve().parent / "packs"
H = 3_600_000


@pytest.fixture(scope="module")
def dam():  # type: ignore[no-untyped-def]
    return load_ruleset(
        [PACKS / "dam_seepage.yaml"], PACKS / "demo_dam_stations.yaml", "en"
    ).ruleset


def test_piezometric_level_is_elevation_plus_head(dam) -> None:  # type: ignore[no-untyped-def]
    # P1: sensor at 95.0 m; 130 kPa is 13.25 m of water: 108.25 m, above the 108 m warning.
    readings = [("SK01-P1", "seepage_pressure", k * H, 130.0) for k in range(6)]
    rows = computed_values(dam, readings)
    piezo = [r for r in rows if r.source == "dam.piezometric_level"]
    assert [r.value for r in piezo] == pytest.approx([95.0 + 130.0 / 9.81] * 6)


def test_residual_uses_the_latest_reservoir_level_seen(dam) -> None:  # type: ignore[no-untyped-def]
    proc = PartitionProcessor(dam, lateness_ms=0)
    proc.process(TelemetryBatch.from_rows([("SK01", "reservoir_level", 0, 117.0)]), 0)
    derived = proc.formulas.feed(
        TelemetryBatch.from_rows([("SK01-P1", "seepage_pressure", H, 100.0)])
    )
    # residual = 100 - (-150 + 2.1 * 117) = 4.3 kPa
    assert [(s, m, t) for s, m, t, _ in derived] == [
        ("SK01-P1", "piezometric_level", H),
        ("SK01-P1", "seepage_pressure_residual", H),
    ]
    assert derived[1][3] == pytest.approx(100.0 - (-150.0 + 2.1 * 117.0))
    # A pressure reading older than every reservoir level seen has no residual.
    early = proc.formulas.feed(TelemetryBatch.from_rows([("SK01-P1", "seepage_pressure", -H, 1.0)]))
    assert [m for _, m, _, _ in early] == ["piezometric_level"]


def _residual_p1(pressure: float, level: float) -> float:
    return pressure - (-150.0 + 2.1 * level)  # SK01-P1's model in the demo registry


def test_one_batch_pairs_each_pressure_with_the_level_before_it(dam) -> None:  # type: ignore[no-untyped-def]
    # Issue 10, item 6: a batch of a day's hourly readings stored the newest reservoir
    # level first, then rejected every earlier pressure reading as older than it: one
    # residual in 24 where one batch per reading gave 24.
    rows = []
    for k in range(24):
        rows.append(("SK01", "reservoir_level", k * H, 117.0 + 0.1 * k))
        rows.append(("SK01-P1", "seepage_pressure", k * H + 60_000, 100.0))
    derived = PartitionProcessor(dam).formulas.feed(TelemetryBatch.from_rows(rows))
    residuals = [(t, v) for _, m, t, v in derived if m == "seepage_pressure_residual"]
    assert [t for t, _ in residuals] == [k * H + 60_000 for k in range(24)]
    assert [v for _, v in residuals] == pytest.approx(
        [_residual_p1(100.0, 117.0 + 0.1 * k) for k in range(24)]
    )


def test_a_pressure_reading_after_a_newer_level_pairs_with_the_level_at_its_time(dam) -> None:  # type: ignore[no-untyped-def]
    # The piezometer's message arrives after the reservoir's next one: the level at or
    # before the pressure's own time is the 10:00 one, not "none" and not 11:00's.
    proc = PartitionProcessor(dam)
    proc.formulas.feed(TelemetryBatch.from_rows([("SK01", "reservoir_level", 10 * H, 117.0)]))
    proc.formulas.feed(TelemetryBatch.from_rows([("SK01", "reservoir_level", 11 * H, 118.0)]))
    derived = proc.formulas.feed(
        TelemetryBatch.from_rows([("SK01-P1", "seepage_pressure", 11 * H - 1, 100.0)])
    )
    assert derived[1][1:3] == ("seepage_pressure_residual", 11 * H - 1)
    assert derived[1][3] == pytest.approx(_residual_p1(100.0, 117.0))


def test_levels_survive_a_checkpoint_and_an_old_checkpoint_still_loads(dam) -> None:  # type: ignore[no-untyped-def]
    proc = PartitionProcessor(dam)
    proc.process(
        TelemetryBatch.from_rows(
            [("SK01", "reservoir_level", 0, 117.0), ("SK01", "reservoir_level", H, 118.0)]
        ),
        0,
    )
    again = PartitionProcessor(dam)
    again.restore(proc.snapshot())
    assert again.formulas.history == {("SK01", "reservoir_level"): [(0, 117.0), (H, 118.0)]}
    again.formulas.restore({"SK01\x1freservoir_level": [H, 118.0]})  # before the history
    assert again.formulas.history == {("SK01", "reservoir_level"): [(H, 118.0)]}


def test_levels_older_than_the_history_are_dropped_but_the_one_at_its_edge_stays(dam) -> None:  # type: ignore[no-untyped-def]
    from engine.evaluation.derive.formulas import HISTORY_MS

    proc = PartitionProcessor(dam)
    rows = [("SK01", "reservoir_level", k * H, 100.0 + k) for k in range(48)]
    proc.formulas.feed(TelemetryBatch.from_rows(rows))
    levels = proc.formulas.history[("SK01", "reservoir_level")]
    assert levels[0] == (47 * H - HISTORY_MS, 100.0 + 47 - HISTORY_MS // H)
    assert len(levels) == HISTORY_MS // H + 1

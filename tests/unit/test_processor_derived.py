"""Derived metrics from the dam pack: piezometric level from pore pressure, and the
seepage-pressure residual against the reservoir level, through the rules."""

from __future__ import annotations

from pathlib import Path

import pytest

import rules
from engine.batch import TelemetryBatch
from engine.processor import PartitionProcessor
from engine.replay import computed_values
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

"""The compiler's output: shapes, NaN for unused levels, per-station values, extras."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.contracts.alerts import Level
from engine.contracts.ruleset import RuleSet, ThresholdRule
from rules import Compiled, RulesInvalid, load_registry, load_ruleset

PACKS = Path(__file__).resolve().parents[2] / "rules" / "packs"


@pytest.fixture(scope="module")
def flood() -> Compiled:
    return load_ruleset([PACKS / "flood.yaml"], PACKS / "demo_stations.yaml")


def test_river_level_thresholds_per_station(flood: Compiled) -> None:
    assert isinstance(flood.ruleset, RuleSet)
    # Every windowed threshold rule of the pack runs in the engine.
    by_id = {r.rule_id: r for r in flood.ruleset.rules}
    assert {r: by_id[r].aggregate for r in by_id} == {
        "flood.river_level": "max",
        "flood.river_rise_rate": "delta",
        "flood.rain_1h": "sum",
        "flood.rain_3h": "sum",
        "flood.rain_6h": "sum",
        "flood.rain_24h": "sum",
    }
    rule = by_id["flood.river_level"]
    assert isinstance(rule, ThresholdRule)
    assert rule.stations == ("HZ001", "HZ002", "HZ003")
    assert rule.thresholds.shape == (3, 4)
    np.testing.assert_allclose(
        rule.thresholds,
        [[4.2, 4.5, 5.8, 6.52], [2.9, 3.2, 4.1, 4.87], [2.3, 2.6, 3.4, 3.95]],
    )
    assert (rule.direction, rule.window_ms, rule.aggregate) == (1, 900_000, "max")
    assert (rule.deadband, rule.for_ms, rule.stale_ms) == (0.05, 600_000, 3_600_000)
    assert rule.labels["HZ002"] == {
        "kind": "river_gauge",
        "name": "示例二号站 Demo gauge 2",
        "basin": "demo_river",
        "district": "middle_county",
        "unit": "m",
        "domain": "flood",
    }
    assert rule.summary.startswith("{name}({station})水位")
    assert rule.resolved_summary.endswith("{previous_level}预警解除")


def test_default_texts_per_language(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - id: r\n    select: {ids: [HZ001]}\n    metric: water_level\n"
        "    window: {size: 15m}\n    levels: {red: {above: 9}}\n",
        encoding="utf-8",
    )
    zh = load_ruleset([tmp_path / "r.yaml"], PACKS / "demo_stations.yaml").ruleset.rules[0]
    en = load_ruleset([tmp_path / "r.yaml"], PACKS / "demo_stations.yaml", lang="en")
    default = ThresholdRule("x", "m", (), np.empty((0, 4)))
    assert "预警(阈值" in zh.summary and "预警解除" in zh.resolved_summary
    assert en.ruleset.rules[0].summary == default.summary
    assert en.ruleset.rules[0].resolved_summary == default.resolved_summary


def test_unused_levels_are_nan(flood: Compiled) -> None:
    rise = next(r for r in flood.ruleset.rules if r.rule_id == "flood.river_rise_rate")
    assert rise.aggregate == "delta"
    assert np.isnan(rise.thresholds[:, Level.RED - 1]).all()
    np.testing.assert_allclose(rise.thresholds[:, :3], [[0.3, 0.5, 1.0]] * 3)


def test_rain_sums_compile_into_the_ruleset(flood: Compiled) -> None:
    sums = {r.rule_id: r for r in flood.ruleset.rules if r.aggregate == "sum"}
    assert sorted(sums) == ["flood.rain_1h", "flood.rain_24h", "flood.rain_3h", "flood.rain_6h"]
    np.testing.assert_allclose(sums["flood.rain_3h"].thresholds[0], [55, 75, 100, 120])
    assert sums["flood.rain_3h"].window_ms == 3 * 3_600_000
    assert sums["flood.rain_1h"].stations == ("HZ001", "HZ002", "HZ003")


def test_compound_and_corroboration(flood: Compiled) -> None:
    (compound,) = flood.compound
    assert compound.mode == "all" and compound.level is Level.ORANGE
    np.testing.assert_allclose(compound.conditions[0].thresholds, [4.5, 3.2, 2.6])
    np.testing.assert_allclose(compound.conditions[1].thresholds, [20, 20, 20])
    (corr,) = flood.corroboration
    assert corr.source_rule == "flood.river_level" and corr.k == 2
    assert corr.min_level is Level.YELLOW and corr.level is Level.ORANGE
    assert corr.groups == {"demo_river": ("HZ001", "HZ002", "HZ003")}


def test_qc_limits(flood: Compiled) -> None:
    qc = {r.rule_id: r.qc for r in flood.ruleset.rules}
    river, rain = qc["flood.river_level"], qc["flood.rain_1h"]
    assert river is not None and rain is not None
    # flatline 12h at the fastest 5-min reporting interval of the demo gauges
    assert river.flat_n == 12 * 12 and river.max_step == 2.0 and not river.drop_suspect
    assert rain.min == 0


def test_dam_derived_metrics() -> None:
    dam = load_ruleset([PACKS / "dam_seepage.yaml"], PACKS / "demo_dam_stations.yaml")
    derived = {d.rule_id: d for d in dam.derived}
    head = derived["dam.piezometric_level"]
    assert head.op == "pressure_head" and head.stations == ("SK01-P1", "SK01-P2")
    np.testing.assert_allclose(head.sensor_elevation, [95.0, 92.5])
    resid = derived["dam.seepage_pressure_residual"]
    assert resid.against == "reservoir_level" and resid.against_stations == ("SK01", "SK01")
    assert resid.slope is not None
    np.testing.assert_allclose(resid.slope, [2.1, 2.0])
    piezo = next(r for r in dam.ruleset.rules if r.rule_id == "dam.piezometric_level")
    assert piezo.metric == "piezometric_level"
    assert np.isnan(piezo.thresholds[:, [0, 2]]).all()
    np.testing.assert_allclose(piezo.thresholds[:, [1, 3]], [[108, 110], [104, 106.5]])


def test_below_rule_direction_and_english_summary(tmp_path: Path) -> None:
    (tmp_path / "low.yaml").write_text(
        "rules:\n"
        "  - id: low\n"
        "    select: {ids: [HZ003, HZ001]}\n"
        "    metric: water_level\n"
        "    window: {size: 1h, aggregate: min}\n"
        "    levels: {blue: {below: 1.0}, red: {below: 0.5}}\n"
        "    summary: {zh: 低水位, en: low water}\n",
        encoding="utf-8",
    )
    compiled = load_ruleset([tmp_path / "low.yaml"], PACKS / "demo_stations.yaml", lang="en")
    (rule,) = compiled.ruleset.rules
    assert rule.direction == -1 and rule.summary == "low water"
    assert rule.stations == ("HZ001", "HZ003")  # registry order, not selection order
    np.testing.assert_array_equal(rule.thresholds[0], [1.0, np.nan, np.nan, 0.5])


def test_version_changes_with_registry_values(tmp_path: Path) -> None:
    text = (PACKS / "demo_stations.yaml").read_text(encoding="utf-8")
    (tmp_path / "s.yaml").write_text(text.replace("warning_level: 4.50", "warning_level: 4.40"))
    a = load_ruleset([PACKS / "flood.yaml"], PACKS / "demo_stations.yaml").ruleset.version
    b = load_ruleset([PACKS / "flood.yaml"], tmp_path / "s.yaml").ruleset.version
    again = load_ruleset([PACKS / "flood.yaml"], load_registry(PACKS / "demo_stations.yaml"))
    assert a != b and a == again.ruleset.version


def test_invalid_rules_raise_with_lines(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "rules:\n  - id: x\n    select: {ids: [HZ009]}\n    metric: m\n"
        "    window: {size: 1h}\n    levels: {red: {above: 1}}\n",
        encoding="utf-8",
    )
    with pytest.raises(RulesInvalid) as info:
        load_ruleset([tmp_path / "bad.yaml"], PACKS / "demo_stations.yaml")
    assert info.value.lines == [
        f"{tmp_path / 'bad.yaml'}:3:20: select.ids[0]: unknown station 'HZ009' "
        "(did you mean 'HZ003'?)"
    ]


def test_a_rule_matching_no_station_is_a_warning_and_left_out(tmp_path: Path) -> None:
    """A shipped pack must load on a site without some kinds of station (issue 13 item 8):
    the rule that selects nothing, and the basin rule over it, are left out, with warnings."""
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - id: dam\n    select: {kind: reservoir}\n    metric: m\n"
        "    window: {size: 1h}\n    levels: {red: {above: 1}}\n"
        "  - id: lvl\n    select: {kind: river_gauge}\n    metric: water_level\n"
        "    window: {size: 1h, aggregate: max}\n    levels: {red: {above: 9}}\n"
        "  - id: basin\n    select: {kind: reservoir}\n"
        "    corroborate: {rule: dam, level: red, k: 2, within: 1h}\n    level: red\n",
        encoding="utf-8",
    )
    compiled = load_ruleset([tmp_path / "r.yaml"], PACKS / "demo_stations.yaml")
    assert [r.rule_id for r in compiled.ruleset.rules] == ["lvl"]
    assert compiled.ruleset.corroboration == ()
    registry = PACKS / "demo_stations.yaml"
    assert compiled.warnings == (
        f"{tmp_path / 'r.yaml'}:3:5: warning: select: selection matches no station in "
        f"{registry}: the rule is not evaluated",
        f"{tmp_path / 'r.yaml'}:13:5: warning: select: selection matches no station in "
        f"{registry}: the rule is not evaluated",
    )

"""Semantic checks against a registry: each problem's exact line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rules import check_paths

STATIONS = """\
stations:
  - id: HZ001
    kind: river_gauge
    basin: north
    report_interval: 5m
    metrics: {water_level: m, rainfall: mm}
    warning_level: 4.5
    guaranteed_level: 5.8
    historical_max_level: 6.5
  - id: HZ002
    kind: river_gauge
    basin: north
    report_interval: 1h
    metrics: {water_level: m}
    warning_level: 3.2
    guaranteed_level: 3.0
  - id: HZ003
    kind: river_gauge
    basin: south
    metrics: {water_level: cm}
    warning_level: 300
    guaranteed_level: 350
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("stations.yaml").write_text(STATIONS, encoding="utf-8")


def check(rules: str) -> list[str]:
    Path("r.yaml").write_text("version: 1\nrules:\n" + textwrap.dedent(rules), encoding="utf-8")
    return check_paths(["r.yaml"], "stations.yaml")


def test_levels_out_of_order_at_some_stations() -> None:
    assert check("""\
      - id: lvl
        select: {ids: [HZ001, HZ002]}
        metric: water_level
        window: {size: 1h, aggregate: max}
        levels:
          yellow: {above: station.warning_level}
          orange: {above: station.guaranteed_level}
    """) == [
        "r.yaml:9:14: levels.orange.above: orange threshold is below yellow's at "
        "HZ002 (3 < 3.2); levels must go yellow <= orange"
    ]


def test_levels_out_of_order_for_below_rules_without_stations() -> None:
    assert check("""\
      - id: low
        select: {ids: [HZ001]}
        metric: water_level
        window: {size: 1h, aggregate: min}
        levels:
          blue: {below: 1.0}
          red: {below: 2.0}
    """) == [
        "r.yaml:9:11: levels.red.below: red threshold is above blue's at HZ001 (2 > 1); "
        "levels must go blue >= red"
    ]


def test_equal_levels_are_allowed() -> None:
    assert (
        check("""\
      - id: eq
        select: {ids: [HZ001]}
        metric: water_level
        window: {size: 15m}
        levels: {yellow: {above: 20}, orange: {above: 20}}
    """)
        == []
    )


def test_unit_mismatch_names_stations() -> None:
    assert check("""\
      - id: u
        select: {kind: river_gauge}
        metric: water_level
        unit: m
        window: {size: 1h, aggregate: max}
        levels: {yellow: {above: station.warning_level}}
    """) == [
        "r.yaml:6:3: unit: unit 'm' does not match the registry's 'cm' for water_level at HZ003"
    ]


def test_window_shorter_than_reporting_interval() -> None:
    assert check("""\
      - id: w
        select: {basin: north}
        metric: water_level
        window: {size: 15m, aggregate: max}
        levels: {yellow: {above: station.warning_level}}
    """) == [
        "r.yaml:6:12: window.size: window 15m is shorter than the reporting interval 1h of HZ002"
    ]


def test_station_field_missing_at_some_stations() -> None:
    assert check("""\
      - id: f
        select: {kind: river_gauge}
        metric: water_level
        window: {size: 1h, aggregate: max}
        levels: {red: {above: station.historical_max_level}}
    """) == [
        "r.yaml:7:18: levels.red.above: station field 'historical_max_level' is not set "
        "for HZ002, HZ003"
    ]


def test_selection_matching_no_station() -> None:
    assert check("""\
      - id: s
        select: {kind: reservoir}
        metric: reservoir_level
        window: {size: 1h}
        levels: {red: {above: 1}}
    """) == [
        "r.yaml:4:3: warning: select: selection matches no station in stations.yaml: "
        "the rule is not evaluated"
    ]


def test_unknown_station_id_with_hint() -> None:
    assert check("""\
      - id: s
        select: {ids: [HZ001, HZ01]}
        metric: water_level
        window: {size: 1h}
        levels: {red: {above: 1}}
    """) == ["r.yaml:4:25: select.ids[1]: unknown station 'HZ01' (did you mean 'HZ001'?)"]


def test_metric_not_reported() -> None:
    assert check("""\
      - id: m
        select: {basin: north}
        metric: rainfal
        window: {size: 1h, aggregate: sum}
        levels: {red: {above: 80}}
    """) == [
        "r.yaml:5:3: metric: 'rainfal' is not reported by HZ001, HZ002 (did you mean 'rainfall'?)"
    ]


def test_summary_placeholder_unknown() -> None:
    assert check("""\
      - id: p
        select: {ids: [HZ001]}
        metric: water_level
        window: {size: 1h}
        levels: {red: {above: 1}}
        labels: {team: hydro}
        summary: {zh: "{stn} {team}", en: "{station} {value:.1f}"}
        all_clear: {zh: "{previous_level}", en: "{prev_level}"}
    """) == [
        "r.yaml:9:13: summary.zh: unknown placeholder {stn} (did you mean 'station'?)",
        "r.yaml:10:39: all_clear.en: unknown placeholder {prev_level} "
        "(did you mean 'previous_level'?)",
    ]


def test_compound_condition_checks() -> None:
    assert check("""\
      - id: c
        select: {ids: [HZ001, HZ002]}
        all:
          - {metric: water_level, window: {size: 1h}, above: station.warning_level}
          - {metric: rainfall, unit: mm, window: {size: 1h, aggregate: sum}, above: 20}
        level: orange
    """) == ["r.yaml:7:8: all[1].metric: 'rainfall' is not reported by HZ002"]


def test_corroboration_of_unknown_rule_and_too_large_k() -> None:
    base = """\
      - id: lvl
        select: {kind: river_gauge}
        metric: water_level
        window: {size: 1h, aggregate: max}
        levels: {yellow: {above: station.warning_level}}
    """.rstrip(" ")
    assert check(
        base
        + """\
      - id: corr
        select: {kind: river_gauge}
        corroborate: {rule: lvel, level: yellow, k: 2, group_by: basin, within: 1h}
        level: orange
    """
    ) == ["r.yaml:10:17: corroborate.rule: no threshold rule 'lvel' (did you mean 'lvl'?)"]
    assert check(
        base
        + """\
      - id: corr
        select: {kind: river_gauge}
        corroborate: {rule: lvl, level: yellow, k: 2, group_by: basin, within: 1h}
        level: orange
    """
    ) == [
        "r.yaml:10:43: warning: corroborate.k: k 2 is more than the stations of basin south: "
        "it cannot fire there"
    ]


def test_duplicate_rule_id_across_files() -> None:
    rule = """\
version: 1
rules:
  - id: same
    select: {ids: [HZ001]}
    metric: water_level
    window: {size: 1h}
    levels: {red: {above: 9}}
"""
    Path("a.yaml").write_text(rule, encoding="utf-8")
    Path("b.yaml").write_text(rule, encoding="utf-8")
    assert check_paths(["a.yaml", "b.yaml"], "stations.yaml") == [
        "b.yaml:3:5: id: duplicate rule id 'same' (first at a.yaml:3)"
    ]


def test_unreadable_registry_is_one_line() -> None:
    Path("r.yaml").write_text("rules: []\n", encoding="utf-8")
    assert check_paths(["r.yaml"], "missing.yaml") == [
        "missing.yaml:1:1: cannot read: No such file or directory"
    ]

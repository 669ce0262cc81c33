"""Broken rule files and the exact problem line each one gets.

The lines are the user interface (STYLE.md habit 4): every assertion is the whole line.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rules import check_paths
from rules.errors import RulesInvalid
from rules.loader import load_rule_file

STATIONS = """\
stations:
  - id: HZ001
    kind: river_gauge
    name: One
    basin: demo
    report_interval: 5m
    metrics: {water_level: m, rainfall: mm}
    warning_level: 4.5
    guaranteed_level: 5.8
    historical_max_level: 6.5
  - id: HZ002
    kind: river_gauge
    name: Two
    basin: demo
    report_interval: 5m
    metrics: {water_level: m}
    warning_level: 3.2
    guaranteed_level: 3.0
"""

GOOD = """\
version: 1
rules:
  - id: river_level
    select: {kind: river_gauge}
    metric: water_level
    unit: m
    window: {size: 15m, aggregate: max}
    levels:
      blue:
        above: station.warning_level - 0.3
      yellow:
        above: station.warning_level
      red:
        above: station.warning_level + 1
    for: 10m
"""


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    Path("stations.yaml").write_text(STATIONS, encoding="utf-8")
    return tmp_path


def check(text: str, stations: str | None = "stations.yaml") -> list[str]:
    Path("flood.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return check_paths(["flood.yaml"], stations)


def broken(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


def test_good_file_has_no_problems(in_tmp: Path) -> None:
    assert check(GOOD, None) == []


# (what is changed in GOOD, the whole expected line); checked without a registry
SCHEMA_CASES = [
    (
        ("above: station.warning_level + 1", "above: warn_levle"),
        "flood.yaml:14:9: levels.red.above: expected a number or a station field, "
        "got 'warn_levle' (did you mean 'station.warning_level'?)",
    ),
    (
        ("above: station.warning_level + 1", "above: true"),
        "flood.yaml:14:9: levels.red.above: expected a number or a station field, got True",
    ),
    (
        ("      red:\n        above:", "      red:\n        abov:"),
        "flood.yaml:14:9: levels.red.abov: unknown field 'abov' (did you mean 'above'?)",
    ),
    (
        ("      red:\n        above: station.warning_level + 1\n", "      red: {}\n"),
        "flood.yaml:13:7: levels.red: give exactly one of 'above' or 'below'",
    ),
    (
        ("    for: 10m", "    for: 10"),
        "flood.yaml:15:5: for: expected a duration like '15m', '1h', '90s' or '1d', got 10",
    ),
    (
        ("    for: 10m", "    for: 50d"),
        "flood.yaml:15:5: for: at most 49 days (the engine's longest `for`), got 50d",
    ),
    (
        ("aggregate: max", "aggregat: max"),
        "flood.yaml:7:25: window.aggregat: unknown field 'aggregat' (did you mean 'aggregate'?)",
    ),
    (
        ("aggregate: max", "aggregate: maximum"),
        "flood.yaml:7:25: window.aggregate: Input should be 'max', 'min', 'mean', 'sum', "
        "'last', 'first', 'count' or 'delta'",
    ),
    (
        ("{kind: river_gauge}", "{kind: river_gage}"),
        "flood.yaml:4:14: select.kind: unknown station kind 'river_gage' (did you mean "
        "'river_gauge'?)",
    ),
    (
        ("{kind: river_gauge}", "{}"),
        "flood.yaml:4:5: select: select needs at least one of ids, kind, tags, basin, "
        "district, measures",
    ),
    (
        ("    metric: water_level\n", ""),
        "flood.yaml:3:5: metric: required field is missing",
    ),
    (
        ("    for: 10m", "    fro: 10m"),
        "flood.yaml:15:5: fro: unknown field 'fro' (did you mean 'for'?)",
    ),
    (
        ("      yellow:\n        above:", "      yellow:\n        below:"),
        "flood.yaml:8:5: levels: yellow uses below but blue uses above: all levels of a rule "
        "go the same direction",
    ),
    (
        ("rules:\n", "rulez: 1\nrules:\n"),
        "flood.yaml:2:1: rulez: unknown field 'rulez' (did you mean 'rules'?)",
    ),
    (
        ("aggregate: max", "aggregate: max, every: 25m"),
        "flood.yaml:7:5: window: every: 25m does not divide the window's size 15m",
    ),
    (
        ("  - id: river_level", "  - id: river level"),
        "flood.yaml:3:5: id: String should match pattern '^[A-Za-z0-9_.-]+$'",
    ),
]


@pytest.mark.parametrize(("change", "expected"), SCHEMA_CASES)
def test_schema_problem_line(in_tmp: Path, change: tuple[str, str], expected: str) -> None:
    assert check(broken(*change), None) == [expected]


def test_yaml_syntax_error(in_tmp: Path) -> None:
    assert check("rules:\n  - id: [x\n", None) == [
        "flood.yaml:3:1: invalid YAML: did not find expected ',' or ']'"
    ]


def test_duplicate_key(in_tmp: Path) -> None:
    text = broken("    for: 10m", "    for: 10m\n    for: 5m")
    assert check(text, None) == ["flood.yaml:16:5: duplicate key 'for'"]


def test_not_a_rule_file(in_tmp: Path) -> None:
    assert check("- 1\n- 2\n", None) == ["flood.yaml:1:1: expected a mapping with a 'rules' list"]


def test_duplicate_rule_id(in_tmp: Path) -> None:
    rule = GOOD.split("rules:\n", 1)[1]
    assert check(GOOD + rule, None) == [
        "flood.yaml:16:5: id: duplicate rule id 'river_level' (first at rules[0])"
    ]


def test_several_problems_sorted_by_position(in_tmp: Path) -> None:
    text = broken("    for: 10m", "    for: 10").replace("aggregate: max", "aggregat: max")
    assert check(text, None) == [
        "flood.yaml:7:25: window.aggregat: unknown field 'aggregat' (did you mean 'aggregate'?)",
        "flood.yaml:15:5: for: expected a duration like '15m', '1h', '90s' or '1d', got 10",
    ]


def test_misspelt_station_field_with_registry(in_tmp: Path) -> None:
    text = broken("above: station.warning_level + 1", "above: station.warn_levle")
    assert check(text, None) == []  # without a registry it may be a free field
    assert check(text) == [
        "flood.yaml:14:9: levels.red.above: no station of the registry defines the field "
        "'warn_levle' (did you mean 'warning_level'?)"
    ]


def test_free_field_unknown_to_registry_is_a_problem_with_registry(in_tmp: Path) -> None:
    text = broken("station.warning_level + 1", "station.seepage_limit")
    assert check(text, None) == []
    assert check(text) == [
        "flood.yaml:14:9: levels.red.above: no station of the registry defines the field "
        "'seepage_limit'"
    ]


def test_load_rule_file_raises_with_lines(in_tmp: Path) -> None:
    Path("flood.yaml").write_text(broken("    for: 10m", "    for: 10"), encoding="utf-8")
    with pytest.raises(RulesInvalid) as info:
        load_rule_file("flood.yaml")
    assert info.value.lines == [
        "flood.yaml:15:5: for: expected a duration like '15m', '1h', '90s' or '1d', got 10"
    ]

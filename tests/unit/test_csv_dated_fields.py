"""Dated station fields in a CSV station registry and in the registry store (issue 18,
item 5): a spreadsheet row says what the YAML says (seasons in a cell, a rule curve's
file, ``<field>.tz`` columns), with the same thresholds every day and the same alerts on
a real dam's series; ``rules check`` names the row and column; ``vigil registry import``
keeps a rule curve with the station."""

from __future__ import annotations

import csv
import shutil
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from engine.contracts.ruleset import RuleSet, ThresholdRule
from engine.tools.cli import main
from engine.tools.replay import replay
from rules import check_paths
from rules.api import load_ruleset
from rules.errors import RulesInvalid
from rules.registry import load_registry
from rules.store import put_stations, station_documents

ROOT = Path(__file__).resolve().parents[2]
PACKS = ROOT / "rules" / "packs"
DAM = ROOT.parent / "shared" / "data" / "dam"
DAM_CSV = DAM / "clay_core_dam_piezometers_P01-P20_with_reservoir_H_daily.csv"

#: The demo dam registry (rules/packs/demo_dam_stations.yaml) as a hydrology team keeps
#: it in a spreadsheet, with a rule curve added to the reservoir: its flood-limit level
#: is a seasonal table in Beijing days, the curve counts Indian days.
DEMO_DAM_CSV = """\
id,kind,name,basin,district,reservoir,report_interval,metrics,sensor_elevation,\
normal_pool_level,flood_limit_level,flood_limit_level.tz,design_flood_level,\
check_flood_level,historical_max_level,fields.rule_curve,fields.rule_curve.tz,\
fields.seepage_warning,fields.seepage_allowable,fields.seepage_daily_rise,\
fields.piezometric_warning,fields.piezometric_limit,fields.residual_intercept,\
fields.residual_slope,fields.residual_2s,fields.residual_3s
SK01,reservoir,示例水库 Demo reservoir,demo_river,upper_county,,1h,reservoir_level:m;rainfall:mm,,\
118.0,06-01..09-30: 116.5; 10-01..05-31: 118.0,Asia/Shanghai,120.3,\
121.1,119.2,curves/sk01.csv,+05:30,,,,,,,,,
SK01-WE1,seepage_weir,示例水库量水堰 Demo seepage weir,demo_river,upper_county,SK01,1h,\
seepage_flow:L/s,,,,,,,,,,8.0,12.0,2.0,,,,,,
SK01-P1,piezometer,示例水库渗压计 P1,demo_river,upper_county,SK01,1h,seepage_pressure:kPa,95.0,\
,,,,,,,,,,,108.0,110.0,-150.0,2.1,6.0,9.0
SK01-P2,piezometer,示例水库渗压计 P2,demo_river,upper_county,SK01,1h,seepage_pressure:kPa,92.5,\
,,,,,,,,,,,104.0,106.5,-170.0,2.0,5.0,7.5
"""

#: SK01's yearly rule curve (m): drawn down before the monsoon, refilled after it.
CURVE = "date,value\n01-01,116.0\n04-01,113.0\n07-01,111.0\n10-01,117.0\n"

CURVE_RULE = """\
version: 1
rules:
  - id: dam.rule_curve
    select: {kind: reservoir}
    metric: reservoir_level
    unit: m
    window: {size: 1d, aggregate: max}
    levels:
      blue: {above: station.rule_curve - 1}
      yellow: {above: station.rule_curve}
    deadband: 0.05
"""


def _registries(tmp_path: Path) -> tuple[Path, Path]:
    """The demo dam registry in YAML (the shipped file, SK01 given the rule curve) and
    in CSV, side by side with the curve's file."""
    (tmp_path / "curves").mkdir()
    (tmp_path / "curves" / "sk01.csv").write_text(CURVE, encoding="utf-8")
    data = yaml.safe_load((PACKS / "demo_dam_stations.yaml").read_text(encoding="utf-8"))
    data["stations"][0]["fields"] = {"rule_curve": {"csv": "curves/sk01.csv", "tz": "+05:30"}}
    (tmp_path / "stations.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    (tmp_path / "stations.csv").write_text(DEMO_DAM_CSV, encoding="utf-8")
    (tmp_path / "rule_curve.yaml").write_text(CURVE_RULE, encoding="utf-8")
    return tmp_path / "stations.yaml", tmp_path / "stations.csv"


def _ruleset(tmp_path: Path, stations: Path) -> RuleSet:
    files = [PACKS / "dam_seepage.yaml", tmp_path / "rule_curve.yaml"]
    return load_ruleset(files, stations, "en").ruleset


def _sk01_rules(ruleset: RuleSet) -> dict[str, ThresholdRule]:
    ids = ("dam.reservoir_level", "dam.rule_curve")
    return {r.rule_id: r for r in ruleset.rules if r.rule_id in ids}


def test_the_demo_dam_as_a_spreadsheet_is_the_yaml_registry(tmp_path: Path) -> None:
    """Station by station, the CSV gives what the YAML gives, seasonal table and rule
    curve (with their zones) included; and so both give the same thresholds, period by
    period, every 6 hours of three years (2024 a leap year)."""
    yaml_path, csv_path = _registries(tmp_path)
    from_yaml, from_csv = load_registry(yaml_path), load_registry(csv_path)
    assert [s.id for s in from_csv] == [s.id for s in from_yaml]
    for station in from_yaml:
        assert from_csv.get(station.id) == station
    sk01 = from_csv.get("SK01")
    assert set(sk01.dated_fields()) == {"flood_limit_level", "rule_curve"}

    by_yaml = _sk01_rules(_ruleset(tmp_path, yaml_path))
    by_csv = _sk01_rules(_ruleset(tmp_path, csv_path))
    assert set(by_yaml) == set(by_csv) == {"dam.reservoir_level", "dam.rule_curve"}
    seen: dict[str, set[float]] = {rule_id: set() for rule_id in by_yaml}
    t = datetime(2023, 1, 1, tzinfo=UTC)
    while t < datetime(2026, 1, 1, tzinfo=UTC):
        ms = int(t.timestamp() * 1000)
        for rule_id, rule in by_yaml.items():
            other = by_csv[rule_id]
            assert rule.calendar is not None and other.calendar is not None
            start, end, thresholds = rule.calendar.period(ms)
            got = other.calendar.period(ms)
            assert (got[0], got[1]) == (start, end), (rule_id, t)
            np.testing.assert_array_equal(got[2], thresholds, err_msg=f"{rule_id} {t}")
            row = rule.stations.index("SK01")
            seen[rule_id].add(round(float(thresholds[row, 1]), 3))  # yellow
        t += timedelta(hours=6)
    assert seen["dam.reservoir_level"] == {116.5, 118.0}
    assert len(seen["dam.rule_curve"]) > 300  # the curve changes day by day


def _dam_readings() -> list[tuple[str, str, int, float]]:
    """The clay-core dam's daily reservoir level (shared/data/dam, metres relative to
    an unstated datum), set on a 92 m datum so that it crosses SK01's lines: the
    flood-season limit (116.5) in August and September, the rest of the year's (118.0),
    the design and check flood levels in winter, and the rule curve."""
    with DAM_CSV.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["H_reservoir_rel_m"].strip()]
    out = []
    for row in rows:
        ts = int(datetime.fromisoformat(row["date"] + "T00:00+00:00").timestamp() * 1000)
        out.append(("SK01", "reservoir_level", ts, 92.0 + float(row["H_reservoir_rel_m"])))
    return out


def test_yaml_csv_and_the_registry_store_raise_the_same_alerts_on_a_real_dam(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nine years of a real dam's daily level against the dam pack and a rule curve:
    the YAML registry, the CSV registry and the registry store the CSV was imported
    into (its curve file gone afterwards) raise the same alerts, event for event."""
    yaml_path, csv_path = _registries(tmp_path)
    readings = _dam_readings()
    expected = replay(_ruleset(tmp_path, yaml_path), readings)
    from_csv = replay(_ruleset(tmp_path, csv_path), readings)
    assert from_csv == expected

    data_dir = tmp_path / "var"
    assert main(["registry", "import", str(csv_path), "--data-dir", str(data_dir)]) == 0
    assert "4 stations: 4 added" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "curves")  # the store keeps the curve, not its path
    from_store = replay(_ruleset(tmp_path, data_dir / "registry"), readings)
    assert from_store == expected

    # The comparison means something: each season's limit and the curve decided alerts.
    yellow = {
        (e.rule_id, e.threshold) for e in expected if e.level == "yellow" and e.state == "firing"
    }
    assert {("dam.reservoir_level", 116.5), ("dam.reservoir_level", 118.0)} <= yellow
    assert sum(1 for rule_id, _ in yellow if rule_id == "dam.rule_curve") > 5
    assert any(e.rule_id == "dam.reservoir_level" and e.level == "red" for e in expected)


def test_a_seasons_cell_counts_the_station_s_days(tmp_path: Path) -> None:
    """Without a ``<field>.tz`` column, a seasons cell takes the row's ``tz``, as a YAML
    table takes the station's; a single day may stand alone (02-29)."""
    (tmp_path / "s.csv").write_text(
        "id,kind,tz,flood_limit_level\n"
        "SK07,reservoir,Asia/Shanghai,06-01..08-31: 102.5; 09-01..02-28: 104; 02-29: 103;"
        " 03-01..05-31: 104\n",
        encoding="utf-8",
    )
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""\
        stations:
          - id: SK07
            kind: reservoir
            tz: Asia/Shanghai
            flood_limit_level:
              seasons:
                - {from: 06-01, to: 08-31, value: 102.5}
                - {from: 09-01, to: 02-28, value: 104}
                - {from: 02-29, to: 02-29, value: 103}
                - {from: 03-01, to: 05-31, value: 104}
        """), encoding="utf-8")  # fmt: skip
    station = load_registry(tmp_path / "s.csv").get("SK07")
    assert station == load_registry(tmp_path / "s.yaml").get("SK07")
    table = station.dated("flood_limit_level")
    assert table is not None and table.tz == "Asia/Shanghai"


def _check(tmp_path: Path, registry: str, files: dict[str, str] | None = None) -> list[str]:
    for name, text in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "stations.csv").write_text(registry, encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(CURVE_RULE, encoding="utf-8")
    lines = check_paths([tmp_path / "rules.yaml"], tmp_path / "stations.csv")
    # A registry among the checked files is validated as one, with the same lines.
    assert sorted(check_paths([tmp_path / "stations.csv"], None)) == sorted(lines)
    return [line.replace(str(tmp_path) + "/", "") for line in lines]


BAD_ROWS = """\
id,kind,flood_limit_level,flood_limit_level.tz,fields.rule_curve,fields.rule_curve.tz
SK01,reservoir,06-01..09-30 116.5,,curves/sk01.csv,
SK02,reservoir,06-01..09-31: 116.5; 10-01..05-31: 118.0,,curves/sk01.csv,
SK03,reservoir,06-01..09-30: 116.5; 09-15..05-20: 118.0,Asia/Shanghai,curves/sk01.csv,
SK04,reservoir,117.5,+08:00,curves/missing.csv,+05:30
SK05,reservoir,117.5,,curves/bad.csv,
SK06,reservoir,06-01..09-30: 116.5; 10-01..05-31: 118.0,Asia/Shangai,curves/sk01.csv,+5:30
"""


def test_rules_check_names_the_row_and_column_of_a_bad_dated_cell(tmp_path: Path) -> None:
    curve_files = {
        "curves/sk01.csv": CURVE,
        "curves/bad.csv": "date,value\n01-01,116\n03-01,x\n01-01,115\n",
    }
    assert _check(tmp_path, BAD_ROWS, curve_files) == [
        "stations.csv:2:3: stations[0].flood_limit_level: expected a number, seasons as "
        "'MM-DD..MM-DD: value; ...' or a rule curve FILE.csv; got '06-01..09-30 116.5'",
        "stations.csv:3:3: stations[1].flood_limit_level.seasons[0].to: '09-31' is not a day "
        "of the year",
        "stations.csv:4:3: stations[2].flood_limit_level.seasons[1].from: season overlaps "
        "season 06-01..09-30 on 09-15..09-30",
        "stations.csv:4:3: stations[2].flood_limit_level.seasons: no season covers 05-21..05-31",
        "stations.csv:5:4: stations[3].flood_limit_level.tz: a time zone for "
        "flood_limit_level, which is not seasons or a rule curve: its days do not matter",
        "stations.csv:5:5: stations[3].fields.rule_curve.csv: cannot read rule curve "
        "'curves/missing.csv': No such file or directory",
        "curves/bad.csv:3:7: value: expected a number, got 'x'",
        "curves/bad.csv:4:1: date: dates must increase: 01-01 is not after the row above",
        "stations.csv:7:4: stations[5].flood_limit_level.tz: unknown time zone 'Asia/Shangai': "
        "give an IANA name such as 'Asia/Shanghai' or an offset such as '+08:00'",
        "stations.csv:7:6: stations[5].fields.rule_curve.tz: unknown time zone '+5:30': "
        "give an IANA name such as 'Asia/Shanghai' or an offset such as '+08:00'",
    ]


def test_the_registry_store_keeps_a_rule_curve_and_refuses_one_without_its_points(
    tmp_path: Path,
) -> None:
    """``vigil registry import`` keeps the curve's points with the station, so the store
    needs no file (a curve beside the store, or none, is never read); a store written
    without them says so instead of reading whatever file the path finds."""
    yaml_path, _ = _registries(tmp_path)
    store = tmp_path / "var" / "registry"
    assert main(["registry", "import", str(yaml_path), "--data-dir", str(tmp_path / "var")]) == 0
    docs = {d["id"]: d for d in station_documents(store)}
    assert docs["SK01"]["fields"]["rule_curve"] == {
        "csv": "curves/sk01.csv",
        "tz": "+05:30",
        "points": [["01-01", 116.0], ["04-01", 113.0], ["07-01", 111.0], ["10-01", 117.0]],
    }
    # A different file where the path would lead from the store's folder: not read.
    (tmp_path / "var" / "curves").mkdir()
    (tmp_path / "var" / "curves" / "sk01.csv").write_text("date,value\n01-01,1.0\n")
    assert load_registry(store).get("SK01") == load_registry(yaml_path).get("SK01")

    old = {"id": "SK09", "kind": "reservoir", "fields": {"rule_curve": {"csv": "curves/sk01.csv"}}}
    put_stations(store, [old])
    with pytest.raises(RulesInvalid) as info:
        load_registry(store)
    assert info.value.lines == [
        f"{store}:5:1: stations[4].fields.rule_curve: the store holds rule curve "
        "'curves/sk01.csv' without its points (imported by an older vigil): import the "
        "station registry again"
    ]

    # ``points`` is the store's: in a registry file it is an unknown field.
    (tmp_path / "s.yaml").write_text(
        "stations:\n  - id: SK01\n    kind: reservoir\n"
        "    fields: {rule_curve: {csv: c.csv, points: [[01-01, 1.0]]}}\n",
        encoding="utf-8",
    )
    with pytest.raises(RulesInvalid) as info:
        load_registry(tmp_path / "s.yaml")
    assert info.value.lines == [
        f"{tmp_path}/s.yaml:4:39: stations[0].fields.rule_curve.points: unknown field 'points'"
    ]

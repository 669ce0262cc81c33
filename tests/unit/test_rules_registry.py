"""Station registry: YAML and CSV loading, and the problems they report."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules import RulesInvalid, load_registry

YAML = """\
stations:
  - id: HZ001
    kind: river_gauge
    name: 示例一号站
    basin: demo
    district: upper
    lat: 30.25
    lon: 120.05
    report_interval: 5m
    metrics: {water_level: m, rainfall: mm}
    warning_level: 4.5
    guaranteed_level: 5.8
    tags: [demo, mainstem]
    fields: {blue_level: 4.2}
  - id: SK01-P1
    kind: piezometer
    reservoir: SK01
    metrics: {seepage_pressure: kPa}
    sensor_elevation: 95.0
"""

CSV = """\
id,kind,name,basin,district,lat,lon,report_interval,metrics,warning_level,guaranteed_level,tags,fields.blue_level
HZ001,river_gauge,示例一号站,demo,upper,30.25,120.05,5m,water_level:m;rainfall:mm,4.5,5.8,demo;mainstem,4.2
HZ002,river_gauge,,demo,,,,,water_level:m,3.2,,,
"""


def test_yaml_registry(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(YAML, encoding="utf-8")
    reg = load_registry(path)
    assert [s.id for s in reg] == ["HZ001", "SK01-P1"]
    hz = reg.get("HZ001")
    assert hz.metrics == {"water_level": "m", "rainfall": "mm"}
    assert hz.report_interval_ms == 300_000
    assert hz.tags == frozenset({"demo", "mainstem"})
    assert hz.value("warning_level") == 4.5
    assert hz.value("blue_level") == 4.2
    assert hz.value("historical_max_level") is None
    assert hz.labels() == {
        "kind": "river_gauge",
        "name": "示例一号站",
        "basin": "demo",
        "district": "upper",
    }
    assert reg.get("SK01-P1").labels() == {"kind": "piezometer", "name": "SK01-P1"}
    assert "blue_level" in reg.field_names() and "warning_level" in reg.field_names()


def test_station_is_frozen(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(YAML, encoding="utf-8")
    station = load_registry(path).get("HZ001")
    with pytest.raises(ValueError, match="frozen"):
        station.warning_level = 1.0


def test_csv_registry_matches_yaml(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(YAML, encoding="utf-8")
    (tmp_path / "s.csv").write_text(CSV, encoding="utf-8")
    from_csv = load_registry(tmp_path / "s.csv")
    assert from_csv.get("HZ001") == load_registry(tmp_path / "s.yaml").get("HZ001")
    hz2 = from_csv.get("HZ002")
    assert (hz2.name, hz2.district, hz2.guaranteed_level, hz2.tags) == ("", None, None, frozenset())


def test_csv_problems_point_at_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text(
        "id,kind,warn_level,fields.limit\nA,river_gauge,3,x\nA,rain_gage,,\n", encoding="utf-8"
    )
    with pytest.raises(RulesInvalid) as info:
        load_registry(path)
    assert info.value.lines == [
        f"{path}:2:3: stations[0].warn_level: unknown field 'warn_level' "
        "(did you mean 'warning_level'?)",
        f"{path}:3:2: stations[1].kind: unknown station kind 'rain_gage' "
        "(did you mean 'rain_gauge'?)",
    ]


def test_yaml_problems(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "stations:\n"
        "  - {id: A, kind: river_gauge, lat: 100}\n"
        "  - {id: A, kind: river_gauge}\n"
        "  - {id: B, kind: river_gauge, fields: {warning_level: 1}}\n"
        "  - {id: C, kind: river_gauge, report_interval: 5}\n",
        encoding="utf-8",
    )
    with pytest.raises(RulesInvalid) as info:
        load_registry(path)
    assert info.value.lines == [
        f"{path}:2:32: stations[0].lat: Input should be less than or equal to 90",
        f"{path}:4:5: stations[2]: free field 'warning_level' has the name of a built-in field",
        f"{path}:5:32: stations[3].report_interval: expected a duration like '15m', '1h', "
        "'90s' or '1d', got 5",
    ]


def test_duplicate_station_id(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "stations:\n  - {id: A, kind: river_gauge}\n  - {id: A, kind: rain_gauge}\n",
        encoding="utf-8",
    )
    with pytest.raises(RulesInvalid) as info:
        load_registry(path)
    assert info.value.lines == [f"{path}:3:6: stations[1].id: duplicate station id 'A'"]


def test_thousands_of_stations_load(tmp_path: Path) -> None:
    rows = [
        f"GZ{i:05d},river_gauge,gauge {i},basin{i % 40},d{i % 300},{20 + i % 10},{110 + i % 10},"
        f"5m,water_level:m;rainfall:mm,{3 + i % 5},{4 + i % 5},,"
        for i in range(5000)
    ]
    header = CSV.splitlines()[0]
    path = tmp_path / "big.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    reg = load_registry(path)
    assert len(reg) == 5000
    assert reg.get("GZ04999").warning_level == 7.0

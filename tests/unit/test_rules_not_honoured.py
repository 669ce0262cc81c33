"""Keys ``rules check`` used to accept and the engine ignored: each is refused now, at
its own file:line:col, with a reason a rule author can act on (``qc.drop`` works instead,
see ``test_qc_drop.py``)."""

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
  - id: HZ002
    kind: river_gauge
    basin: north
    metrics: {water_level: m, rainfall: mm}
  - id: AQ1
    kind: air_quality
    metrics: {aqi: "1", pm2_5: ug/m3}
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("stations.yaml").write_text(STATIONS, encoding="utf-8")


def check(rules: str) -> list[str]:
    Path("r.yaml").write_text("version: 1\nrules:\n" + textwrap.dedent(rules), encoding="utf-8")
    return check_paths(["r.yaml"], "stations.yaml")


def test_stale_on_a_compound_rule() -> None:
    assert check("""\
      - id: both
        select: {ids: [HZ001]}
        stale: 1h
        level: yellow
        all:
          - {metric: water_level, window: {size: 15m, aggregate: max}, above: 1}
          - {metric: rainfall, window: {size: 1h, aggregate: sum}, above: 10}
    """) == [
        "r.yaml:5:3: stale: a compound rule has no silence check; put 'stale' on the "
        "threshold rules of the metrics it reads"
    ]


def test_every_on_a_compound_condition() -> None:
    assert check("""\
      - id: both
        select: {ids: [HZ001]}
        level: yellow
        any:
          - {metric: rainfall, window: {size: 1h, every: 10m, aggregate: sum}, above: 10}
    """) == [
        "r.yaml:7:45: any[0].window.every: a compound rule's conditions use tumbling "
        "windows; 'every' is not supported here"
    ]


def test_stale_on_a_corroboration_rule() -> None:
    assert check("""\
      - id: lvl
        select: {ids: [HZ001, HZ002]}
        metric: water_level
        window: {size: 1h, aggregate: max}
        levels: {yellow: {above: 1}}
      - id: basin
        select: {basin: north}
        stale: 2h
        corroborate: {rule: lvl, level: yellow, k: 2, within: 1h}
        level: orange
    """) == [
        "r.yaml:10:3: stale: a corroboration rule has no silence check; put 'stale' on "
        "the threshold rules of the metrics it reads"
    ]


def test_flatline_without_any_reporting_interval() -> None:
    assert check("""\
      - id: lvl
        select: {ids: [HZ002]}
        metric: water_level
        window: {size: 1h, aggregate: max}
        levels: {yellow: {above: 1}}
        qc: {flatline: 6h}
    """) == [
        "r.yaml:8:8: qc.flatline: no selected station has a report_interval, so the "
        "flat-line test cannot count readings; set report_interval in the station registry"
    ]


def test_aqi_method_only_on_aqi_and_one_per_station() -> None:
    assert check("""\
      - id: a
        select: {ids: [AQ1]}
        metric: aqi
        window: {size: 1h, aggregate: last}
        levels: {blue: {above: 101}}
        aqi_method: cnemc_hourly
      - id: b
        select: {kind: air_quality}
        metric: aqi
        window: {size: 12h, aggregate: min}
        levels: {orange: {above: 201}}
    """) == [
        "r.yaml:9:3: aqi_method: the default aqi_method 'hj633_24h' differs from "
        "'cnemc_hourly' of rule 'a' at AQ1: a station's AQI is computed one way"
    ]
    problems = check("""\
      - id: a
        select: {ids: [AQ1]}
        metric: pm2_5
        window: {size: 1h, aggregate: last}
        levels: {blue: {above: 75}}
        aqi_method: cnemc_hourly
    """)
    assert len(problems) == 1
    assert "aqi_method applies to rules on metric 'aqi', not 'pm2_5'" in problems[0]

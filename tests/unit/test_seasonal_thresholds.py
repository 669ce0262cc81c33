"""Thresholds that vary with the date (issue 18 item 5): a reservoir's seasonal
flood-limit level (汛限水位) and a rule curve from a CSV, used by ``above:`` like any
station field; ``rules check`` errors at ``file:line:col``; live equals replay."""

from __future__ import annotations

import csv
import itertools
import textwrap
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch
from engine.evaluation.processor import PartitionProcessor
from engine.tools.cli import main
from engine.tools.replay import replay
from rules import check_paths
from rules.api import load_ruleset
from rules.registry import load_registry
from tests.differential.compare import compare, cutoff, timed_compounds
from tests.differential.live_model import run_live
from tests.traffic import REGISTRY, TrafficSpec, generate

HOUR = 3_600_000
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DAM = DATA / "dam" / "clay_core_dam_piezometers_P01-P20_with_reservoir_H_daily.csv"

STATIONS = """\
stations:
  - id: SK07
    kind: reservoir
    metrics: {reservoir_level: m}
    design_flood_level: 106.0
    flood_limit_level:  # 汛限水位: main flood season and the rest
      tz: Asia/Shanghai
      seasons:
        - {from: 06-01, to: 08-31, value: 102.5}
        - {from: 09-01, to: 05-31, value: 104.0}
"""


def _rules(window: str = "{size: 1h, aggregate: max}", extra: str = "") -> str:
    return "version: 1\nrules:\n" + textwrap.indent(
        textwrap.dedent(f"""\
        - id: dam.flood_limit
          select: {{kind: reservoir}}
          metric: reservoir_level
          window: {window}
          levels:
            yellow: {{above: station.flood_limit_level}}
            orange: {{above: station.design_flood_level}}
          deadband: 0.02
        """)
        + extra,
        "  ",
    )


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _iso(ms: int, tz: str = "+08:00") -> str:
    zone = datetime.fromisoformat(f"2000-01-01T00:00{tz}").tzinfo
    return datetime.fromtimestamp(ms / 1000, zone).isoformat(timespec="minutes")


def _hourly(first: str, last: str, value: float) -> list[tuple[str, str, int, float]]:
    return [("SK07", "reservoir_level", t, value) for t in range(_ms(first), _ms(last), HOUR)]


def _load(tmp_path: Path, rules: str, stations: str = STATIONS) -> Any:
    (tmp_path / "stations.yaml").write_text(stations, encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(rules, encoding="utf-8")
    return load_ruleset([tmp_path / "rules.yaml"], tmp_path / "stations.yaml", "en").ruleset


def _seen(events: list[AlertEvent]) -> list[tuple[str, str, float, float]]:
    return [(e.level, _iso(e.at), e.value, e.threshold) for e in events]


@pytest.mark.parametrize("window", ["{size: 1h, aggregate: max}", "{size: 1h, aggregate: mean}"])
@pytest.mark.parametrize("batch_size", [10_000, 5, 1])
def test_a_reservoir_raises_at_the_flood_season_limit_from_june_1_and_not_before(
    tmp_path: Path, window: str, batch_size: int
) -> None:
    """103.0 m, steady, from 30 May to 2 June (Beijing time): above the flood-season
    limit (102.5) and below the rest of the year's (104.0). The max window raises on
    the first reading of 1 June; the mean window when its first June window closes."""
    ruleset = _load(tmp_path, _rules(window))
    events = replay(ruleset, _hourly("2024-05-30T00:00+08:00", "2024-06-03T00:00+08:00", 103.0),
                    batch_size)  # fmt: skip
    at = "2024-06-01T00:00+08:00" if "max" in window else "2024-06-01T01:00+08:00"
    assert _seen(events) == [("yellow", at, 103.0, 102.5)]


@pytest.mark.parametrize("step_down", ["window", "reading"])
def test_an_open_alert_is_judged_against_the_new_limit_from_september_1(
    tmp_path: Path, step_down: str
) -> None:
    """The alert raised in the flood season is lifted once the limit rises to 104.0 on
    1 September: at the first September reading with ``step_down: reading``; with the
    default, when the first window of September closes (the August one is judged with
    August's limit, the threshold of its last instant)."""
    ruleset = _load(tmp_path, _rules(extra=f"  step_down: {step_down}\n"))
    readings = _hourly("2024-08-30T00:00+08:00", "2024-09-03T00:00+08:00", 103.0)
    lifted = "2024-09-01T00:00+08:00" if step_down == "reading" else "2024-09-01T01:00+08:00"
    for batch_size in (10_000, 3, 1):
        assert _seen(replay(ruleset, readings, batch_size)) == [
            ("yellow", "2024-08-30T00:00+08:00", 103.0, 102.5),
            ("none", lifted, 103.0, 104.0),
        ]


def test_a_silent_gauge_window_is_judged_with_its_own_season(tmp_path: Path) -> None:
    """A gauge whose last August window is closed by its next reading a day later (a
    gap over the boundary) is judged as if the watermark had closed it: with August's
    limit, which it holds; the September reading itself is then below the new one."""
    ruleset = _load(tmp_path, _rules())
    readings = [
        ("SK07", "reservoir_level", _ms("2024-08-31T22:00+08:00"), 103.0),
        ("SK07", "reservoir_level", _ms("2024-09-01T22:00+08:00"), 103.0),
    ]
    assert _seen(replay(ruleset, readings)) == [
        ("yellow", "2024-08-31T22:00+08:00", 103.0, 102.5),
        ("none", "2024-09-01T23:00+08:00", 103.0, 104.0),
    ]


@pytest.mark.parametrize("window", ["{size: 1h, aggregate: max}", "{size: 1h, aggregate: mean}"])
def test_a_window_the_watermark_closes_is_judged_with_its_own_season(
    tmp_path: Path, window: str
) -> None:
    """SK07 falls silent at 22:00 on 31 August; SK08's readings in September move the
    partition's event time past SK07's last window, which closes on the watermark: it
    holds August's limit, so the alert stays (there is no later reading to judge)."""
    stations = STATIONS + "  - {id: SK08, kind: reservoir, metrics: {reservoir_level: m}, " \
        "design_flood_level: 106.0, flood_limit_level: 104.0}\n"  # fmt: skip
    ruleset = _load(tmp_path, _rules(window), stations)
    readings = [
        ("SK07", "reservoir_level", _ms("2024-08-31T22:00+08:00"), 103.0),
        ("SK08", "reservoir_level", _ms("2024-09-01T02:00+08:00"), 100.0),
        ("SK08", "reservoir_level", _ms("2024-09-01T03:00+08:00"), 100.0),
    ]
    raised = "2024-08-31T22:00+08:00" if "max" in window else "2024-08-31T23:00+08:00"
    for batch_size in (10_000, 1):
        assert _seen(replay(ruleset, readings, batch_size)) == [("yellow", raised, 103.0, 102.5)]


CURVE = [("01-01", 24.0), ("04-01", 20.0), ("06-15", 14.0), ("08-31", 14.0), ("10-15", 24.0)]


def _curve_value(day: date) -> float:
    """The yearly curve of ``CURVE`` on ``day``, interpolated by hand (plain Python)."""
    points = []
    for year in (day.year - 1, day.year, day.year + 1):
        for md, v in CURVE:
            points.append((date(year, int(md[:2]), int(md[3:])), v))
    for (d0, v0), (d1, v1) in itertools.pairwise(points):
        if d0 <= day <= d1:
            return v0 + (v1 - v0) * (day - d0).days / (d1 - d0).days
    raise AssertionError(day)


def _reference(readings: list[tuple[int, float]]) -> list[tuple[str, int, float]]:
    """The engine's rule (1-day max windows, one reading each, blue at the curve - 2 m,
    yellow at the curve, no deadband) written out for daily readings: a level is entered
    on the reading that breaches it and left when the window of the reading below it
    closes (a day later), judged with that day's curve."""
    names = ["none", "blue", "yellow"]

    def level(t: int, v: float) -> int:
        c = _curve_value(datetime.fromtimestamp(t / 1000, UTC).date())
        return (v >= c - 2.0) + (v >= c)

    out, current, previous = [], 0, None
    for t, v in readings:
        if previous is not None:
            end = previous[0] - previous[0] % (24 * HOUR) + 24 * HOUR
            held = level(*previous)
            if held < current:  # the window before closes, at its end
                out.append((names[held], end, previous[1]))
                current = held
        now = level(t, v)
        if now > current:
            out.append((names[now], t, v))
            current = now
        previous = (t, v)
    assert previous is not None
    if level(*previous) < current:
        out.append((names[level(*previous)], previous[0] + 24 * HOUR, previous[1]))
    return out


def test_a_rule_curve_follows_a_plain_python_reference_on_a_real_reservoir(
    tmp_path: Path,
) -> None:
    """Nine years of a real dam's daily reservoir level (shared/data/dam: relative m)
    against a constructed yearly rule curve, read from a CSV and interpolated linearly."""
    (tmp_path / "curves").mkdir()
    lines = ["date,value", *(f"{md},{v}" for md, v in CURVE)]
    (tmp_path / "curves" / "dam.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    stations = textwrap.dedent("""\
        stations:
          - id: SK07
            kind: reservoir
            metrics: {reservoir_level: m}
            fields:
              rule_curve: {csv: curves/dam.csv}
        """)
    rules = textwrap.dedent("""\
        version: 1
        rules:
          - id: curve
            select: {kind: reservoir}
            metric: reservoir_level
            window: {size: 1d, aggregate: max}
            levels:
              blue: {above: station.rule_curve - 2}
              yellow: {above: station.rule_curve}
        """)
    ruleset = _load(tmp_path, rules, stations)
    with DAM.open(encoding="utf-8") as f:
        series = [
            (_ms(row["date"] + "T00:00+00:00"), float(row["H_reservoir_rel_m"]))
            for row in csv.DictReader(f)
            if row["H_reservoir_rel_m"]
        ]
    expected = _reference(series)
    assert len(expected) > 100  # the curve is crossed often: the comparison means something
    readings = [("SK07", "reservoir_level", t, v) for t, v in series]
    for batch_size in (10_000, 97):
        got = [(e.level, e.at, e.value) for e in replay(ruleset, readings, batch_size)]
        assert got == expected


def _error_lines(tmp_path: Path, stations: str, files: dict[str, str] | None = None) -> list[str]:
    (tmp_path / "stations.yaml").write_text(stations, encoding="utf-8")
    for name, text in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(_rules(), encoding="utf-8")
    return [
        line.replace(str(tmp_path) + "/", "")
        for line in check_paths([tmp_path / "rules.yaml"], tmp_path / "stations.yaml")
    ]


BAD_SEASONS = """\
stations:
  - id: SK07
    kind: reservoir
    metrics: {reservoir_level: m}
    design_flood_level: 106.0
    flood_limit_level:
      seasons:
        - {from: 06-01, to: 08-31, value: 102.5}
        - {from: 08-15, to: 05-20, value: 104.0}
"""


def test_rules_check_names_overlapping_and_missing_days_at_their_line(tmp_path: Path) -> None:
    assert _error_lines(tmp_path, BAD_SEASONS) == [
        "stations.yaml:9:12: stations[0].flood_limit_level.seasons[1].from: season overlaps "
        "season 06-01..08-31 on 08-15..08-31",
        "stations.yaml:7:7: stations[0].flood_limit_level.seasons: no season covers 05-21..05-31",
    ]


def test_rules_check_refuses_a_day_that_is_not_in_the_year(tmp_path: Path) -> None:
    stations = BAD_SEASONS.replace("08-15, to: 05-20", "09-01, to: 02-30")
    assert _error_lines(tmp_path, stations) == [
        "stations.yaml:9:25: stations[0].flood_limit_level.seasons[1].to: '02-30' is not a "
        "day of the year",
    ]


def test_rules_check_names_a_missing_csv_and_dates_out_of_order(tmp_path: Path) -> None:
    stations = textwrap.dedent("""\
        stations:
          - id: SK07
            kind: reservoir
            metrics: {reservoir_level: m}
            design_flood_level: 106.0
            flood_limit_level: {csv: curves/sk07.csv}
        """)
    assert _error_lines(tmp_path, stations) == [
        "stations.yaml:6:25: stations[0].flood_limit_level.csv: cannot read rule curve "
        "'curves/sk07.csv': No such file or directory",
    ]
    curve = "date,value\n2024-01-01,103.0\n2024-06-01,102.5\n2024-05-01,102.8\n2024-13-01,1\n"
    assert _error_lines(tmp_path, stations, {"curves/sk07.csv": curve}) == [
        "curves/sk07.csv:4:1: date: dates must increase: 2024-05-01 is not after the row above",
        "curves/sk07.csv:5:1: date: expected a date as YYYY-MM-DD or MM-DD, got '2024-13-01'",
    ]


def test_rules_check_holds_the_level_order_on_every_day(tmp_path: Path) -> None:
    """Orange (design flood level 103.5) is above yellow in the flood season only."""
    stations = STATIONS.replace("design_flood_level: 106.0", "design_flood_level: 103.5")
    assert _error_lines(tmp_path, stations) == [
        "rules.yaml:9:16: levels.orange.above: orange threshold is below yellow's at SK07 on "
        "09-01 (103.5 < 104); levels must go yellow <= orange",
    ]


def test_a_field_that_varies_with_the_date_is_refused_where_a_number_is_needed(
    tmp_path: Path,
) -> None:
    (tmp_path / "stations.yaml").write_text(STATIONS, encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(textwrap.dedent("""\
        version: 1
        rules:
          - id: both
            select: {kind: reservoir}
            all:
              - metric: reservoir_level
                window: {size: 1h, aggregate: max}
                above: station.flood_limit_level
            level: yellow
        """), encoding="utf-8")  # fmt: skip
    lines = check_paths([tmp_path / "rules.yaml"], tmp_path / "stations.yaml")
    assert [line.replace(str(tmp_path) + "/", "") for line in lines] == [
        "rules.yaml:8:9: all[0].above: station field 'flood_limit_level' varies with the date "
        "at SK07; only a threshold rule's levels take such a field",
    ]


def test_live_equals_replay_across_a_season_boundary(tmp_path: Path) -> None:
    """The differential harness's traffic (backlogs, outages, out-of-order readings,
    restarts) over 1 July, where each gauge's warning level drops by 0.4 m: the modelled
    live path raises what the replay raises, on the early-firing kernel (max) and the
    window chain (mean)."""
    data = yaml.safe_load(REGISTRY.read_text(encoding="utf-8"))
    for s in data["stations"]:
        if "warning_level" in s:
            w = s["warning_level"]
            s.setdefault("fields", {})["season_level"] = {
                "seasons": [
                    {"from": "07-01", "to": "12-31", "value": round(w - 0.4, 2)},
                    {"from": "01-01", "to": "06-30", "value": w},
                ]
            }
    (tmp_path / "stations.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    rules = "version: 1\nrules:\n"
    for rule_id, aggregate, extra in (("max", "max", "for: 10m"), ("mean", "mean", "")):
        rules += textwrap.indent(textwrap.dedent(f"""\
            - id: season.{rule_id}
              select: {{kind: river_gauge}}
              metric: water_level
              window: {{size: 15m, aggregate: {aggregate}}}
              levels:
                blue: {{above: station.season_level - 0.3}}
                yellow: {{above: station.season_level}}
                orange: {{above: station.guaranteed_level}}
              deadband: 0.05
              {extra}
            """), "  ")  # fmt: skip
    (tmp_path / "rules.yaml").write_text(rules, encoding="utf-8")
    ruleset = load_ruleset([tmp_path / "rules.yaml"], load_registry(tmp_path / "stations.yaml"))
    boundary = _ms("2024-07-01T00:00+00:00")
    compared = 0
    for seed in range(4):
        spec = TrafficSpec(seed=seed, hours=30.0, backlogs=2, shuffle_rate=0.05)
        traffic = generate(spec, boundary - 10 * HOUR)
        lateness = 10 * 60_000
        live = run_live(ruleset.ruleset, traffic, partitions=3, lateness_ms=lateness, plan=seed)
        expected = replay(ruleset.ruleset, traffic.readings())
        crossing = [
            e for e in expected if e.level != "none" and e.threshold in _season_values(data)
        ]
        assert any(e.at >= boundary for e in crossing)  # the new season's line is used
        until = cutoff(traffic.end_ms, lateness)
        diff = compare(live.events, expected, until, traffic.disorder_ms,
                       timed_compounds(ruleset.ruleset))  # fmt: skip
        assert not diff, f"seed {seed}: {traffic.describe()}\n{diff.report()}"
        compared += diff.compared
    assert compared > 50


def _season_values(data: dict[str, Any]) -> set[float]:
    """The July thresholds (warning level - 0.4, and blue 0.3 below it)."""
    out = set()
    for s in data["stations"]:
        if "fields" in s:
            v = s["fields"]["season_level"]["seasons"][0]["value"]
            out |= {float(np.float64(v)), float(np.float64(v) - 0.3)}
    return out


def test_the_days_are_the_zone_s_own(tmp_path: Path) -> None:
    """A table in Beijing time turns at 16:00 UTC; without ``tz`` at UTC midnight."""
    ruleset = _load(tmp_path, _rules(), STATIONS.replace("      tz: Asia/Shanghai\n", ""))
    events = replay(ruleset, _hourly("2024-05-31T00:00+00:00", "2024-06-02T00:00+00:00", 103.0))
    assert [(e.level, _iso(e.at, "+00:00")) for e in events] == [
        ("yellow", "2024-06-01T00:00+00:00")
    ]


def test_a_table_without_its_own_zone_counts_the_station_s_days(tmp_path: Path) -> None:
    """The station's ``tz`` (the one ``tz: station`` windows use) is the table's default."""
    stations = STATIONS.replace("      tz: Asia/Shanghai\n", "").replace(
        "    kind: reservoir\n", "    kind: reservoir\n    tz: Asia/Shanghai\n"
    )
    ruleset = _load(tmp_path, _rules(), stations)
    events = replay(ruleset, _hourly("2024-05-31T00:00+00:00", "2024-06-02T00:00+00:00", 103.0))
    assert [(e.level, _iso(e.at)) for e in events] == [("yellow", "2024-06-01T00:00+08:00")]


def test_the_dam_pack_s_seasonal_rule_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo reservoir's flood-limit level is seasonal; its rule tests say when."""
    tests = Path(__file__).resolve().parents[2] / "rules" / "packs" / "demo_dam_tests.yaml"
    assert main(["rules", "test", str(tests)]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("window", ["{size: 1h, aggregate: max}", "{size: 1h, aggregate: mean}"])
def test_a_reload_to_seasonal_limits_and_a_restart_keep_the_boundary(
    tmp_path: Path, window: str
) -> None:
    """A gateway running a constant limit (104.0) is reloaded with the seasonal table on
    31 May and restarts from its checkpoint on 1 June: it raises where a replay of the
    seasonal rules raises, on the first reading (or window) of 1 June."""
    constant = STATIONS.split("    flood_limit_level:")[0] + "    flood_limit_level: 104.0\n"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    before = _load(tmp_path / "a", _rules(window), constant)
    after = _load(tmp_path / "b", _rules(window))
    readings = _hourly("2024-05-30T00:00+08:00", "2024-06-03T00:00+08:00", 103.0)
    proc = PartitionProcessor(before, lateness_ms=0)
    events: list[AlertEvent] = []
    restarted = False
    for k in range(0, len(readings), 5):
        if readings[k][2] >= _ms("2024-05-31T12:00+08:00") and proc.ruleset is before:
            proc.swap_rules(after)
        if (
            readings[min(k + 4, len(readings) - 1)][2] >= _ms("2024-06-01T00:00+08:00")
            and not restarted
        ):
            saved, restarted = proc.snapshot(), True  # before the batch over the boundary
            proc = PartitionProcessor(after, lateness_ms=0)
            proc.restore(saved)
        events += proc.process(TelemetryBatch.from_rows(readings[k : k + 5]), k)
    assert _seen(events) == _seen(replay(after, readings, flush=False))
    assert [e.level for e in events] == ["yellow"]

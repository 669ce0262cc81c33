"""Windows aligned to local time (issue 18 item 4): a rule's windows start at a local time
of day in a time zone (``window: {size: 1d, align: "08:00", tz: Asia/Shanghai}``, or
``tz: station`` for the stations' own ``tz``), not at UTC midnight.

Daily rainfall 08:00-08:00 Beijing time (日雨量) is the sum a plain computation gives; a
reservoir reported daily at 07:00 IST steps down at its next local day boundary (the
next report), not at UTC midnight 22.5 h after it; ``rules check`` refuses what cannot
hold, at file:line:col."""

from __future__ import annotations

import random
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from engine.contracts.ruleset import RuleSet
from engine.tools.replay import computed_values, replay
from rules import check_paths
from rules.api import load_ruleset

CST = timezone(timedelta(hours=8))
IST = timezone(timedelta(hours=5, minutes=30))

STATIONS = """\
stations:
  - id: R1
    kind: rain_gauge
    tz: Asia/Shanghai
    metrics: {rainfall: mm}
  - id: R2
    kind: rain_gauge
    tz: Asia/Shanghai
    metrics: {rainfall: mm}
  - id: R3
    kind: rain_gauge
    tz: Asia/Kolkata
    metrics: {rainfall: mm}
  - id: R4
    kind: rain_gauge
    metrics: {rainfall: mm}
  - id: RES
    kind: reservoir
    tz: Asia/Kolkata
    flood_limit_level: 100.0
    metrics: {reservoir_level: m}
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("stations.yaml").write_text(STATIONS, encoding="utf-8")


def _write(rules: str) -> str:
    Path("r.yaml").write_text("version: 1\nrules:\n" + textwrap.dedent(rules), encoding="utf-8")
    return "r.yaml"


def _ruleset(rules: str) -> RuleSet:
    return load_ruleset([_write(rules)], "stations.yaml").ruleset


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


DAILY_RAIN = """\
  - id: rain.daily
    select: {ids: [R1, R2]}
    metric: rainfall
    unit: mm
    window: {size: 1d, aggregate: sum, align: "08:00", tz: TZ}
    levels: {blue: {above: 50}, yellow: {above: 100}}
"""


@pytest.mark.parametrize("tz", ["Asia/Shanghai", "station", '"+08:00"'])
def test_daily_rainfall_from_08_00_beijing_time_is_the_published_sum(tz: str) -> None:
    """Hourly rainfall over four days, each hour's total stamped at its end (SL 651's
    hourly rainfall: the 07:00-08:00 total at 08:00); every daily window is the sum of
    the 24 hours from 08:00 Beijing time, as 日雨量 is published, and the alert of a wet
    day is dated at the 08:00 that ends it."""
    rng = random.Random(7)
    start = datetime(2024, 7, 1, 0, 0, tzinfo=CST)
    readings = []
    for station in ("R1", "R2"):
        for h in range(4 * 24):
            mm = round(rng.choice([0.0, 0.0, 0.5, 2.0, 6.5]) * (3 if 30 < h < 50 else 1), 1)
            readings.append((station, "rainfall", _ms(start + timedelta(hours=h + 1)), mm))
    # The plain computation: the rain day of an hour is the day its 08:00 CST opens; an
    # hour's total stamped hh:00 fell in the hour before.
    published: dict[tuple[str, int], float] = {}
    for station, _, ts, mm in readings:
        local = datetime.fromtimestamp(ts / 1000, CST) - timedelta(hours=9)
        day_end = datetime(local.year, local.month, local.day, 8, tzinfo=CST) + timedelta(days=1)
        key = (station, _ms(day_end))
        published[key] = published.get(key, 0.0) + mm
    ruleset = _ruleset(DAILY_RAIN.replace("TZ", tz))
    windows = {(r.station, r.ts): r.value for r in computed_values(ruleset, readings)}
    assert windows == pytest.approx(published)
    assert all(datetime.fromtimestamp(end / 1000, CST).hour == 8 for _, end in windows)
    # The replay's alerts come from the same windows: each at an 08:00 boundary.
    events = replay(ruleset, readings)
    assert events and {datetime.fromtimestamp(e.at / 1000, CST).hour for e in events} == {8}


RESERVOIR = """\
  - id: res.daily
    select: {ids: [RES]}
    metric: reservoir_level
    unit: m
    window: {size: 1d, aggregate: max ALIGN}
    levels: {yellow: {above: station.flood_limit_level}}
"""


def _reservoir_events(align: str) -> list[tuple[str, datetime]]:
    """Daily readings at 07:00 IST: above the flood-limit level on 1 and 2 July, below
    from the 3rd."""
    ruleset = _ruleset(RESERVOIR.replace("ALIGN", align))
    days = [(1, 100.4), (2, 100.2), (3, 99.8), (4, 99.7)]
    readings = [
        ("RES", "reservoir_level", _ms(datetime(2024, 7, d, 7, 0, tzinfo=IST)), v) for d, v in days
    ]
    return [(e.level, datetime.fromtimestamp(e.at / 1000, IST)) for e in replay(ruleset, readings)]


def test_a_reservoir_reported_at_07_00_ist_steps_down_at_its_next_local_day() -> None:
    """With days from 07:00 IST (a report stamped 07:00 closes the day it reports on) the
    all-clear comes with the 3 July report; with UTC days the 3 July report opened a
    window that closed 22.5 h later, at 05:30 IST on the 4th."""
    aligned = _reservoir_events(', align: "07:00", tz: station')
    assert aligned == [
        ("yellow", datetime(2024, 7, 1, 7, 0, tzinfo=IST)),
        ("none", datetime(2024, 7, 3, 7, 0, tzinfo=IST)),
    ]
    assert _reservoir_events("")[-1] == ("none", datetime(2024, 7, 4, 5, 30, tzinfo=IST))


def test_rules_check_refuses_what_an_alignment_cannot_mean() -> None:
    assert check_paths(
        [
            _write("""\
      - id: a
        select: {ids: [R1]}
        metric: rainfall
        window: {size: 1d, aggregate: sum, align: "8am", tz: Asia/Shanghai}
        levels: {blue: {above: 50}}
      - id: b
        select: {ids: [R1]}
        metric: rainfall
        window: {size: 1d, aggregate: sum, tz: Asia/Peking}
        levels: {blue: {above: 50}}
      - id: c
        select: {ids: [R1]}
        metric: rainfall
        window: {size: 1d, aggregate: sum, align: "07:00", tz: Europe/Berlin}
        levels: {blue: {above: 50}}
      - id: d
        select: {kind: rain_gauge}
        metric: rainfall
        window: {size: 1d, aggregate: sum, align: "08:00", tz: station}
        levels: {blue: {above: 50}}
      - id: e
        select: {ids: [R1, R2, R3]}
        metric: rainfall
        window: {size: 1d, aggregate: sum, tz: station}
        levels: {blue: {above: 50}}
      - id: f
        select: {ids: [R1]}
        level: yellow
        all:
          - {metric: rainfall, window: {size: 1d, aggregate: sum, align: "08:00"}, above: 50}
    """)
        ],
        "stations.yaml",
    ) == [
        "r.yaml:6:38: window.align: align '8am' is not a time of day HH:MM such as '08:00'",
        "r.yaml:11:38: window.tz: unknown time zone 'Asia/Peking': give an IANA name such as "
        "'Asia/Shanghai' or an offset such as '+08:00'",
        "r.yaml:16:54: window.tz: time zone Europe/Berlin changes its UTC offset during the "
        "year (UTC+01:00 and UTC+02:00, daylight saving time), which moves the boundaries of "
        "these windows; give the fixed offset the agency counts in, such as '+01:00'",
        "r.yaml:21:54: window.tz: 'station': no tz in the registry for R4",
        "r.yaml:26:38: window.tz: 'station': the selected stations' zones start these "
        "windows at different times (R1, R2; R3); select each zone's stations in a rule "
        "of its own",
        "r.yaml:32:61: all[0].window.align: a compound rule's windows are aligned to UTC; "
        "'align' is not supported here (align the threshold rules instead)",
    ]


def test_hourly_windows_in_a_daylight_saving_zone_are_accepted() -> None:
    """An hour's DST change does not move hourly boundaries: Berlin's hours are UTC's."""
    ruleset = _ruleset("""\
      - id: h
        select: {ids: [R1]}
        metric: rainfall
        window: {size: 1h, aggregate: sum, tz: Europe/Berlin}
        levels: {blue: {above: 20}}
    """)
    assert ruleset.rules[0].window_shift_ms == 0
    summer = _ms(datetime(2024, 7, 1, 10, 20, tzinfo=UTC))
    at = _ms(datetime(2024, 7, 1, 11, 0, tzinfo=UTC))
    assert [e.at for e in replay(ruleset, [("R1", "rainfall", summer, 25.0)])] == [at]

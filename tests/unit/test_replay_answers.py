"""``vigil replay`` never answers wrong in silence (issue 18 item 8): readings no rule
reads are named, with the likely match; times without an offset need ``--tz`` and are
counted when skipped; no silence is invented past the last reading; the input is
sorted in bounded memory (spilled runs merged) exactly as a sort in memory would; standard
input and output work."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import engine.tools.replay_input as replay_input
from engine.tools.cli import main
from engine.tools.replay import replay
from engine.tools.replay_input import SortedReadings
from rules.api import load_ruleset

ROOT = Path(__file__).resolve().parents[2]
OSO = ROOT / "rules" / "examples" / "oso_creek"
RULES, STATIONS = str(OSO / "rules.yaml"), str(OSO / "stations.yaml")
M = 60_000

#: 11:15 below action stage, 11:30 at it (blue), both local time (CDT, UTC-5).
SERIES = "timestamp,value\n2023-04-23T11:15:00{tz},10.90\n2023-04-23T11:30:00{tz},11.48\n"
BLUE_AT = 1682267400000  # 2023-04-23T16:30Z


def _replay(tmp_path: Path, text: str, *args: str) -> tuple[int, list[dict[str, object]]]:
    data, alerts = tmp_path / "in.csv", tmp_path / "alerts.jsonl"
    data.write_text(text, encoding="utf-8")
    rc = main(["replay", "--rules", RULES, "--stations", STATIONS, "--input", str(data),
               "--alerts-out", str(alerts), *args])  # fmt: skip
    return rc, [json.loads(line) for line in alerts.read_text().splitlines()]


def test_a_station_id_without_its_leading_zero_is_named_with_the_likely_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = SERIES.format(tz="-05:00")
    rc, events = _replay(tmp_path, text, "--station", "8211520", "--metric", "water_level")
    assert (rc, events) == (0, [])
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "warning: 2 readings of '8211520' 'water_level' read by no rule: no station "
        "'8211520' in the registry (did you mean '08211520'?)"
    )
    assert err[-1] == "2 readings, 0 alert events, 0 rows skipped, 2 readings read by no rule"
    strict = ["--station", "8211520", "--metric", "water_level", "--strict"]
    assert _replay(tmp_path, text, *strict)[0] == 1


def test_a_wrong_metric_is_named_with_what_the_rules_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = SERIES.format(tz="-05:00")
    rc, _ = _replay(tmp_path, text, "--station", "08211520", "--metric", "water_levle")
    assert rc == 0
    assert capsys.readouterr().err.splitlines()[0] == (
        "warning: 2 readings of '08211520' 'water_levle' read by no rule: the rules read "
        "water_level at '08211520' (did you mean 'water_level'?)"
    )


def test_times_without_an_offset_are_counted_with_examples_and_read_with_tz(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    naive = "timestamp,value\n" + "".join(
        f"2023-04-23T{h:02d}:00:00,10.0\n" for h in range(8)
    ) + "2023-04-23T11:30:00,11.48\n"  # fmt: skip
    args = ["--station", "08211520", "--metric", "water_level"]
    rc, events = _replay(tmp_path, naive, *args, "--strict")
    assert (rc, events) == (1, [])
    err = capsys.readouterr().err.splitlines()
    assert err[:8] == [
        "warning: 9 rows skipped: time without a UTC offset (give --tz, e.g. "
        "--tz Asia/Shanghai or --tz=-05:00)",
        *[f"warning:   {tmp_path / 'in.csv'}:{n}: time '2023-04-23T{n - 2:02d}:00:00' has no "
          "UTC offset" for n in range(2, 7)],
        "warning:   ... and 4 more",
        "0 readings, 0 alert events, 9 rows skipped, 0 readings read by no rule",
    ]  # fmt: skip
    rc, events = _replay(tmp_path, SERIES.format(tz=""), *args, "--tz", "America/Chicago")
    assert rc == 0
    assert [(e["at"], e["level"]) for e in events] == [(BLUE_AT, "blue")]


STALE_RULES = """\
version: 1
rules:
  - id: oso.stage
    select: {ids: ["08211520", "08211500"]}
    metric: water_level
    unit: ft
    window: {size: 15m, aggregate: max}
    stale: 1h
    levels:
      blue: {above: 11}
"""
STALE_STATIONS = """\
stations:
  - {id: "08211520", kind: river_gauge, metrics: {water_level: ft}}
  - {id: "08211500", kind: river_gauge, metrics: {water_level: ft}}
"""


def test_silence_is_judged_only_up_to_the_last_reading(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(STALE_RULES, encoding="utf-8")
    (tmp_path / "s.yaml").write_text(STALE_STATIONS, encoding="utf-8")
    ruleset = load_ruleset([tmp_path / "r.yaml"], tmp_path / "s.yaml").ruleset
    # 08211500 stops at 1:00, 08211520 reports every 15 min up to 3:00
    readings = [("08211520", "water_level", k * 15 * M, 5.0) for k in range(13)]
    readings += [("08211500", "water_level", k * 15 * M, 5.0) for k in range(5)]
    silent = [(e.station, e.at) for e in replay(ruleset, readings) if e.rule_id.endswith("#silent")]
    # 08211500 is silent from 2:00, within the input; nobody after 3:00, its end
    assert silent == [("08211500", 120 * M)]


@pytest.mark.parametrize("run_rows", [7, 100, 10_000])
def test_spilled_runs_merge_into_the_stable_time_order(
    run_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay_input, "MERGE_BLOCK", 5)
    rng = random.Random(run_rows)
    readings = [(f"S{rng.randrange(30)}", rng.choice(["a", "b"]), rng.randrange(200) * M,
                 float(i)) for i in range(2_000)]  # fmt: skip
    with SortedReadings(run_rows=run_rows) as store:
        for r in readings:
            store.add(*r)
        for _ in range(2):  # as often as asked
            got = [(s, m, t, v) for b in store.batches(64) for s, m, t, v, _ in b.rows()]
            assert got == sorted(readings, key=lambda r: r[2])
        assert store.pairs() == {
            (s, m): sum(1 for r in readings if r[:2] == (s, m)) for s, m, _, _ in readings
        }


def test_standard_input_and_output_and_no_progress_off_a_terminal() -> None:
    text = SERIES.format(tz="-05:00")
    done = subprocess.run(
        [sys.executable, "-m", "engine.tools.cli", "replay", "--rules", RULES,
         "--stations", STATIONS, "--input", "-", "--station", "08211520", "--metric", "water_level",
         "--alerts-out", "-"],
        input=text, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["at"], e["level"]) for e in events] == [(BLUE_AT, "blue")]
    assert "\r" not in done.stderr
    assert not (ROOT / "-").exists()


def test_the_summary_counts_one_row_and_one_reading_in_the_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = SERIES.format(tz="-05:00") + "2023-04-23T11:45:00-05:00,high\n"
    rc, events = _replay(tmp_path, text, "--station", "08211520", "--metric", "water_level")
    assert (rc, len(events)) == (0, 1)
    assert capsys.readouterr().err.splitlines()[-1] == (
        "2 readings, 1 alert event, 1 row skipped, 0 readings read by no rule"
    )
    rc, _ = _replay(tmp_path, "timestamp,value\n2023-04-23T11:15:00-05:00,10.9\n",
                    "--station", "8211520", "--metric", "water_level")  # fmt: skip
    assert capsys.readouterr().err.splitlines()[-1] == (
        "1 reading, 0 alert events, 0 rows skipped, 1 reading read by no rule"
    )


@pytest.mark.parametrize("command", ["replay", "diff"])
@pytest.mark.parametrize("missing", ["--input", "--stations"])
def test_a_missing_file_is_one_line_naming_it_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, missing: str
) -> None:
    data = tmp_path / "in.csv"
    data.write_text(SERIES.format(tz="-05:00"), encoding="utf-8")
    files = {"--input": str(data), "--stations": STATIONS}
    files[missing] = str(tmp_path / "nope.csv")
    head = ["replay", "--rules", RULES] if command == "replay" else ["rules", "diff", RULES, RULES]
    rc = main([*head, "--stations", files["--stations"], "--input", files["--input"],
               "--station", "08211520", "--metric", "water_level"])  # fmt: skip
    assert rc == 2
    assert capsys.readouterr().err == f"{tmp_path / 'nope.csv'}: No such file or directory\n"

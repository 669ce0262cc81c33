"""``vigil rules test`` (issue 18 item 9): a rule test file's readings through the replay,
expected alerts against got, exit 1 with the differences; and ``vigil rules diff``'s
exit status and time order."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
OSO = ROOT / "rules" / "examples" / "oso_creek"

TEST_FILE = f"""\
rule_files: [{OSO / "rules.yaml"}]
stations: {OSO / "stations.yaml"}
tz: "-05:00"
tests:
  - name: a rise to action stage, then flood stage
    input:
      - series: {{station: "08211520", metric: water_level, start: "2023-04-23T11:00",
                 every: 15m, values: [10.5, 11.0, null, 20.0]}}
      - {{station: "08211520", metric: water_level, ts: "2023-04-23T11:50", value: 20.5}}
    expected_alerts:
      - {{rule: oso.stage, station: "08211520", level: blue, at: "2023-04-23T11:15",
         started_at: "2023-04-23T11:15"}}
      - {{rule: oso.stage, station: "08211520", level: orange, at: "2023-04-23T{{orange}}"}}
"""


def _run(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    path = tmp_path / "tests.yaml"
    path.write_text(text, encoding="utf-8")
    rc = main(["rules", "test", str(path)])
    return rc, capsys.readouterr().out.splitlines()


def test_a_passing_rule_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _run(tmp_path, TEST_FILE.replace("{orange}", "11:45"), capsys)
    assert (rc, out) == (0, [
        f"ok   {tmp_path / 'tests.yaml'}:5 'a rise to action stage, then flood stage' "
        "(2 alert events)",
        "1 passed, 0 failed",
    ])  # fmt: skip


def test_a_mismatch_exits_1_with_expected_and_got(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = TEST_FILE.replace("{orange}", "11:30").replace(
        'started_at: "2023-04-23T11:15"', 'started_at: "2023-04-23T11:00"'
    )
    rc, out = _run(tmp_path, text, capsys)
    assert (rc, out) == (1, [
        f"FAIL {tmp_path / 'tests.yaml'}:5 'a rise to action stage, then flood stage'",
        "  expected, not raised:",
        "    2023-04-23T11:30:00-05:00 oso.stage 08211520 orange",
        "  raised, not expected:",
        "    2023-04-23T11:45:00-05:00 oso.stage 08211520 orange (from blue, value 20)",
        "  started_at differs at 2023-04-23T11:15:00-05:00 oso.stage 08211520 blue (from none, "
        "value 11): expected 2023-04-23T11:00:00-05:00, got 2023-04-23T11:15:00-05:00",
        "0 passed, 1 failed",
    ])  # fmt: skip


def test_an_invalid_test_file_exits_2_at_file_line_col(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = TEST_FILE.replace("{orange}", "11:45").replace('tz: "-05:00"\n', "")
    rc, out = _run(tmp_path, text, capsys)
    path = tmp_path / "tests.yaml"
    assert (rc, out[:2]) == (2, [
        f"{path}:6:60: tests[0].input[0].series.start: time '2023-04-23T11:00' has no UTC "
        "offset (set the file's tz)",
        f"{path}:8:52: tests[0].input[1].ts: time '2023-04-23T11:50' has no UTC offset "
        "(set the file's tz)",
    ])  # fmt: skip


def test_a_misspelt_level_is_the_only_problem_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the one test is still there: its misspelt level must not also read as "no tests"
    text = TEST_FILE.replace("{orange}", "11:45").replace("level: orange", "level: orang")
    rc, out = _run(tmp_path, text, capsys)
    assert (rc, out) == (2, [
        f"{tmp_path / 'tests.yaml'}:13:48: tests[0].expected_alerts[1].level: Input should be "
        "'none', 'blue', 'yellow', 'orange' or 'red'",
        "0 passed, 0 failed",
    ])  # fmt: skip


DIFF_INPUT = "timestamp,value\n" + "".join(
    f"2023-04-23T{11 + k // 4:02d}:{15 * (k % 4):02d}:00-05:00,{v}\n"
    for k, v in enumerate([10.0, 11.5, 12.5, 21.0, 12.5, 10.0])
)  # fmt: skip


def test_rules_diff_exits_1_on_changes_listed_in_time_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "in.csv"
    data.write_text(DIFF_INPUT, encoding="utf-8")
    old = OSO / "rules.yaml"
    new = tmp_path / "new.yaml"  # action stage 12 ft: blue later; moderate 21.5: no orange
    changed = old.read_text().replace("station.action_stage", "12")
    new.write_text(changed.replace("station.moderate_flood_stage", "21.5"), encoding="utf-8")
    common = ["--stations", str(OSO / "stations.yaml"), "--input", str(data),
              "--station", "08211520", "--metric", "water_level"]  # fmt: skip
    assert main(["rules", "diff", str(old), str(old), *common]) == 0
    capsys.readouterr()
    assert main(["rules", "diff", str(old), str(new), *common]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "~ 2023-04-23T16:15Z -> 2023-04-23T16:30Z oso.stage 08211520 none->blue",
        "+ 2023-04-23T16:45Z oso.stage 08211520 blue->yellow 21",
        "- 2023-04-23T16:45Z oso.stage 08211520 blue->orange 21",
        "+ 2023-04-23T17:00Z oso.stage 08211520 yellow->blue 12.5",
        "- 2023-04-23T17:00Z oso.stage 08211520 orange->blue 12.5",
    ]


def test_rules_diff_warns_of_readings_neither_version_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A station id a spreadsheet stripped of its leading zero: no rule of either version
    # reads its readings, so "nothing changed" is no answer; say so, as replay does.
    data = tmp_path / "in.csv"
    data.write_text(DIFF_INPUT, encoding="utf-8")
    old = OSO / "rules.yaml"
    new = tmp_path / "new.yaml"
    new.write_text(old.read_text().replace("station.action_stage", "12"), encoding="utf-8")
    args = ["--stations", str(OSO / "stations.yaml"), "--input", str(data),
            "--station", "8211520", "--metric", "water_level"]  # fmt: skip
    rc = main(["rules", "diff", str(old), str(new), *args])
    err = capsys.readouterr().err.splitlines()
    assert rc == 0
    assert err == [
        "warning: 6 readings of '8211520' 'water_level' read by no rule: no station "
        "'8211520' in the registry (did you mean '08211520'?)",
        "0 added, 0 removed, 0 moved, 0 unchanged; 6 readings, 0 rows skipped, 6 readings "
        "read by no rule",
    ]


def test_rules_diff_strict_exits_3_when_the_input_was_not_wholly_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As `vigil replay --strict`: a CI gate must not take "nothing read" for "nothing
    # changed". Exit 3, not 1 ("changes found"), whether or not anything changed.
    old = OSO / "rules.yaml"
    new = tmp_path / "new.yaml"
    new.write_text(old.read_text().replace("station.action_stage", "12"), encoding="utf-8")
    data = tmp_path / "in.csv"
    data.write_text(DIFF_INPUT, encoding="utf-8")

    def diff(station: str, *extra: str) -> int:
        capsys.readouterr()
        return main(["rules", "diff", str(old), str(new), "--stations", str(OSO / "stations.yaml"),
                     "--input", str(data), "--station", station, "--metric", "water_level",
                     *extra])  # fmt: skip

    strict_line = "strict: exit 3 (rows skipped, readings no rule read, or no readings)"
    assert diff("8211520", "--strict") == 3  # no rule reads them: nothing was compared
    assert capsys.readouterr().err.splitlines()[-1] == strict_line
    assert diff("08211520", "--strict") == 1  # all read: the changes are the answer
    assert diff("08211520") == 1
    # one row whose time has no UTC offset: skipped, so the diff is over part of the input
    data.write_text(DIFF_INPUT + "2023-04-23T13:00:00,10.0\n", encoding="utf-8")
    assert diff("08211520") == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "0 added, 0 removed, 1 moved, 3 unchanged; 6 readings, 1 row skipped, 0 readings "
        "read by no rule"
    )
    assert diff("08211520", "--strict") == 3
    assert capsys.readouterr().err.splitlines()[-1] == strict_line
    data.write_text("timestamp,value\n", encoding="utf-8")  # no readings at all
    assert diff("08211520") == 0
    assert diff("08211520", "--strict") == 3

"""``rules check`` on what sits in a rules folder: rule files, station registries and rule
tests, told apart by their content; folders stand for their YAML files."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.tools.cli import main
from rules.api import check_files

ROOT = Path(__file__).resolve().parents[2]
PACKS = ROOT / "rules" / "packs"

REGISTRY = """\
# a registry, whatever its name
stations:
  - id: G1
    kind: river_gage
    metrics: {water_level: m}
"""


def test_the_packs_folder_as_a_shell_glob_checks_clean() -> None:
    lines, kinds = check_files(sorted(PACKS.glob("*.yaml")), None)
    assert lines == []
    # rules: air_quality, dam_seepage, demo_field, demo_nbiot_rules, flood; stations:
    # demo_dam_stations, demo_field_stations, demo_nbiot, demo_stations; tests: demo_dam_tests
    assert dict(kinds) == {"rules": 5, "stations": 4, "tests": 3}


def test_a_registry_among_the_rule_files_is_validated_as_a_registry(tmp_path: Path) -> None:
    bad = tmp_path / "gauges.yaml"
    bad.write_text(REGISTRY, encoding="utf-8")
    lines, kinds = check_files([PACKS / "flood.yaml", bad], None)
    assert lines == [
        f"{bad}:4:5: stations[0].kind: unknown station kind 'river_gage' "
        "(did you mean 'river_gauge'?)"
    ]
    assert dict(kinds) == {"rules": 1, "stations": 1}


def test_a_folder_stands_for_its_yaml_files(tmp_path: Path) -> None:
    (tmp_path / "gauges.yaml").write_text(REGISTRY, encoding="utf-8")
    (tmp_path / "rules.yml").write_text("rules:\n  - id: x\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not checked\n", encoding="utf-8")
    lines, _ = check_files([tmp_path], None)
    assert [line.split(": ", 1)[0] for line in lines] == [
        f"{tmp_path / 'gauges.yaml'}:4:5",
        *[f"{tmp_path / 'rules.yml'}:2:5"] * 4,
    ]


def test_a_folder_without_yaml_is_a_problem_not_a_pass(tmp_path: Path) -> None:
    assert check_files([tmp_path], None)[0] == [
        f"{tmp_path}:1:1: no .yaml or .yml file in this directory"
    ]


def test_vigil_rules_check_on_the_packs_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(PACKS)]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "ok: 5 rule files, 4 station registries, 3 rule test files valid (schema only: no "
        "--stations given)"
    )

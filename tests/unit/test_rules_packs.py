"""The shipped packs and examples load and check clean against their registries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rules import check_main, check_paths, load_registry, load_ruleset
from rules.files import kind_of
from rules.source import load_yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"

PAIRS = [
    ("packs/flood.yaml", "packs/demo_stations.yaml"),
    ("packs/dam_seepage.yaml", "packs/demo_dam_stations.yaml"),
    ("packs/demo_field.yaml", "packs/demo_field_stations.yaml"),
    ("packs/air_quality.yaml", "examples/beijing_aqi/stations.yaml"),
    ("examples/oso_creek/rules.yaml", "examples/oso_creek/stations.yaml"),
]


@pytest.mark.parametrize(("rules", "stations"), PAIRS)
def test_pack_checks_clean(rules: str, stations: str) -> None:
    assert check_paths([RULES / rules], RULES / stations) == []


def test_all_rule_files_check_clean_without_registry() -> None:
    assert check_paths([RULES / r for r, _ in PAIRS], None) == []


def test_every_pack_documents_its_sources() -> None:
    for pack in (RULES / "packs").glob("*.yaml"):
        if pack.name.startswith("demo_") or kind_of(pack, load_yaml(pack)) != "rules":
            continue  # a registry or a rule test file: no numbers of its own to source
        head = pack.read_text(encoding="utf-8").split("\nversion:", 1)[0]
        assert "FACTS.md" in head, pack.name


def test_demo_registry_has_three_river_gauges() -> None:
    reg = load_registry(RULES / "packs" / "demo_stations.yaml")
    assert [(s.id, s.kind) for s in reg] == [
        ("HZ001", "river_gauge"),
        ("HZ002", "river_gauge"),
        ("HZ003", "river_gauge"),
    ]
    for s in reg:
        assert s.warning_level is not None and s.guaranteed_level is not None
        assert s.historical_max_level is not None
        assert s.warning_level < s.guaranteed_level < s.historical_max_level


def test_oso_creek_uses_the_nws_stages() -> None:
    compiled = load_ruleset(
        [RULES / "examples/oso_creek/rules.yaml"], RULES / "examples/oso_creek/stations.yaml"
    )
    (rule,) = compiled.ruleset.rules
    assert rule.stations == ("08211520",)
    assert rule.thresholds.tolist() == [[11.0, 20.0, 20.0, 25.0]]
    assert (rule.for_ms, rule.deadband, rule.labels["08211520"]["unit"]) == (0, 0.0, "ft")


def test_air_quality_levels() -> None:
    compiled = load_ruleset(
        [RULES / "packs/air_quality.yaml"], RULES / "examples/beijing_aqi/stations.yaml"
    )
    rules = {r.rule_id: r for r in compiled.ruleset.rules}
    assert rules["aqi.category"].thresholds.tolist() == [[101, 151, 201, 301]] * 2
    assert rules["aqi.heavy_sustained"].aggregate == "min"
    assert rules["aqi.heavy_sustained"].window_ms == 12 * 3_600_000


def test_check_main_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        check_main([str(RULES / "packs/flood.yaml")], str(RULES / "packs/demo_stations.yaml")) == 0
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: x\n", encoding="utf-8")
    assert check_main([str(bad)], None) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        f"{bad}:2:5: select: required field is missing",
        f"{bad}:2:5: metric: required field is missing",
        f"{bad}:2:5: window: required field is missing",
        f"{bad}:2:5: levels: required field is missing",
    ]
    assert out.err.splitlines()[-1] == "4 problems"


def test_python_dash_m_rules_check() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rules",
            "check",
            "rules/examples/oso_creek/rules.yaml",
            "--stations",
            "rules/examples/oso_creek/stations.yaml",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "")
    assert "ok: 1 rule file valid" in done.stderr

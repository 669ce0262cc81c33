"""Every shipped rule test file passes, and every shipped pack and example carries one.

The rule test files under ``rules/`` (told apart by content, as ``vigil rules check``
does) are found by a glob, so a pack change that breaks its rule tests fails here, and a
new test file is run without editing this module. ``vigil rules check rules/packs``
counts them.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from engine.tools.rule_tests import run_test_files
from rules import check_main
from rules.files import kind_of
from rules.source import load_yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"


def _yaml_files(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs for p in d.rglob("*.yaml"))


def _test_files() -> list[Path]:
    files = _yaml_files(RULES / "packs", RULES / "examples")
    return [p for p in files if kind_of(p, load_yaml(p)) == "tests"]


TEST_FILES = _test_files()


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: str(p.relative_to(RULES)))
def test_shipped_rule_test_file_passes(path: Path) -> None:
    out = io.StringIO()
    status = run_test_files([path], out)
    assert status == 0, out.getvalue()
    assert " 0 failed" in out.getvalue()


def test_every_shipped_pack_and_example_has_rule_tests() -> None:
    """Each non-demo pack and each example's rules are named by a rule test file."""
    tested: set[Path] = set()
    for path in TEST_FILES:
        data = load_yaml(path).data
        tested |= {(path.parent / f).resolve() for f in data["rule_files"]}
    packs = [
        p
        for p in _yaml_files(RULES / "packs")
        if not p.name.startswith("demo_") and kind_of(p, load_yaml(p)) == "rules"
    ]
    assert packs, "no pack found"
    untested = [p.name for p in packs if p.resolve() not in tested]
    assert untested == []
    for example in sorted(d for d in (RULES / "examples").iterdir() if d.is_dir()):
        assert any(p.parent == example for p in TEST_FILES), f"{example.name}: no rule tests"


def test_rules_check_counts_the_packs_rule_tests(capsys: pytest.CaptureFixture[str]) -> None:
    in_packs = [p for p in TEST_FILES if p.parent == RULES / "packs"]
    assert len(in_packs) >= 3  # dam, flood, air quality
    assert check_main([str(RULES / "packs")], None) == 0
    assert f"{len(in_packs)} rule test files valid" in capsys.readouterr().err

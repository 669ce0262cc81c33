"""YAML alias expansion is bounded (issue 13 item 11): a "billion laughs" file of a few
hundred bytes fails fast with one clear line instead of eating gigabytes."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from rules.source import MAX_ALIAS_VALUES, SourceError, parse_yaml

#: ~700 bytes: 9 levels of 9 aliases each, 9**9 (387 million) strings once expanded.
BOMB = 'version: 1\nrules: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)
#: Address space for the child: room for Python and the rules package, far less than
#: the expanded bomb (the unbounded parser went past 1.6 GB).
LIMIT_BYTES = 1 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))


def test_rules_check_of_an_alias_bomb_fails_fast_within_a_memory_bound(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB) < 800
    done = subprocess.run(
        [sys.executable, "-m", "rules", "check", str(bomb)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_memory,
    )
    assert done.stdout.splitlines() == [
        f"{bomb}:7:1: YAML aliases expand to more than {MAX_ALIAS_VALUES} values "
        "(an alias bomb?); write the values out or use fewer aliases"
    ], done.stderr[-2000:]
    assert done.returncode == 1


def test_aliases_of_ordinary_size_still_expand() -> None:
    text = "base: &t {above: 1.5, below: 0}\nrules:\n" + "".join(
        f"  - {{id: r{i}, levels: *t}}\n" for i in range(200)
    )
    data = parse_yaml(text, "r.yaml").data
    assert data["rules"][199] == {"id": "r199", "levels": {"above": 1.5, "below": 0}}


def test_the_bound_counts_what_aliases_expand_to() -> None:
    # 1 + 2 values per alias: just past the bound fails, at the key that crossed it.
    n = MAX_ALIAS_VALUES // 3 + 1
    text = "a: &x [1, 2]\nb: [" + ", ".join(["*x"] * n) + "]\n"
    with pytest.raises(SourceError, match=r"^r\.yaml:2:1: YAML aliases expand to more than"):
        parse_yaml(text, "r.yaml")
    ok = "a: &x [1, 2]\nb: [" + ", ".join(["*x"] * (n - 2)) + "]\n"
    assert len(parse_yaml(ok, "r.yaml").data["b"]) == n - 2

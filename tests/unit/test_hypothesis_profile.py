"""The Hypothesis profiles of ``tests/conftest.py``: CI draws the same examples on every
run; ``VIGIL_DIFF_EXAMPLES`` draws new ones and prints the seed that draws them again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROPERTY = """\
import os

from hypothesis import given, strategies as st

@given(st.integers(0, 10**9))
def test_draws(x):
    with open(os.environ["DRAWS_OUT"], "a") as f:
        f.write(f"{{x}}\\n")
    assert {holds}
"""

#: A property that fails within a few draws (Hypothesis favours small and boundary
#: integers, so "x < 10**8" could pass 50 draws; half of all integers are odd).
ODD_FAILS = "x % 2 == 0"


def _run(tmp: Path, name: str, env: dict[str, str], *args: str, holds: str = "True"):
    """Run a one-property test file under the project's conftest; (draws, output)."""
    (tmp / name).mkdir()
    out = tmp / name / "draws"
    test = tmp / name / "test_property.py"  # the same test each time: only the run differs
    test.write_text(PROPERTY.format(holds=holds))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VIGIL_", "HYPOTHESIS"))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp / name), str(test), *args],
        cwd=ROOT, env={**clean, **env, "DRAWS_OUT": str(out)}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    return out.read_text().split(), proc.stdout + proc.stderr


def test_ci_runs_draw_the_same_examples_every_time(tmp_path: Path) -> None:
    first, out = _run(tmp_path, "a", {})
    second, _ = _run(tmp_path, "b", {})
    assert len(first) == 100 and first == second, out


def test_longer_runs_on_request_draw_new_examples_and_print_the_seed(tmp_path: Path) -> None:
    first, _ = _run(tmp_path, "a", {"VIGIL_DIFF_EXAMPLES": "300"})
    second, _ = _run(tmp_path, "b", {"VIGIL_DIFF_EXAMPLES": "300"})
    assert len(first) == len(second) == 300 and first != second
    # A failure prints its seed; that seed draws the same examples again.
    failed, out = _run(tmp_path, "c", {"VIGIL_DIFF_EXAMPLES": "50"}, holds=ODD_FAILS)
    assert "1 failed" in out
    seed = out.split("pytest --hypothesis-seed=")[-1].split()[0]
    again, out2 = _run(tmp_path, "d", {"VIGIL_DIFF_EXAMPLES": "50"}, f"--hypothesis-seed={seed}",
                       holds=ODD_FAILS)  # fmt: skip
    assert again == failed, (out, out2)
    chosen, out3 = _run(tmp_path, "e", {"VIGIL_DIFF_EXAMPLES": "50", "VIGIL_HYPOTHESIS_SEED": seed},
                        holds=ODD_FAILS)  # fmt: skip
    assert chosen == failed, out3

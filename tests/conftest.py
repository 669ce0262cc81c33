"""Hypothesis, the same on every run in CI and longer on request.

* By default (CI, ``make test``) the profile ``ci`` is loaded: ``derandomize``, so every
  property test draws the same examples on every run and machine (a CI run that fails,
  fails again on the same command; one that passes is not a lucky draw), and no example
  database (nothing a previous run left changes what runs).
* ``VIGIL_DIFF_EXAMPLES=N`` loads the profile ``long``: random draws, ``N`` examples for
  each property test that does not fix its own count (the differential harness,
  ``tests/unit/test_live_equals_replay.py``, takes ``N`` too). Its seed is
  ``VIGIL_HYPOTHESIS_SEED`` or a random one; it is printed in the header and again after
  a failure, with the command that draws the same examples again
  (``--hypothesis-seed=SEED``, which also works alone).

The seeded traffic generator of the differential tests has its own seed,
``VIGIL_DIFF_SEED`` (``tests/traffic.py``, README "Testing").
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import core, settings

#: Examples per property test on request (None: the CI profile).
LONG_EXAMPLES = os.environ.get("VIGIL_DIFF_EXAMPLES")

# No deadline: a test never fails on wall time (the machine may be shared and loaded).
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
settings.register_profile(
    "long",
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
    max_examples=int(LONG_EXAMPLES or 100),
)
settings.load_profile("long" if LONG_EXAMPLES else "ci")


def pytest_configure(config: pytest.Config) -> None:
    if LONG_EXAMPLES and config.getoption("--hypothesis-seed") is None:
        chosen = os.environ.get("VIGIL_HYPOTHESIS_SEED")
        core.global_force_seed = int(chosen) if chosen else random.randrange(2**32)


def _seed_line() -> str:
    seed = core.global_force_seed
    if seed is None:
        return "hypothesis: profile 'ci' (derandomized: the same examples on every run)"
    again = f"VIGIL_DIFF_EXAMPLES={LONG_EXAMPLES} " if LONG_EXAMPLES else ""
    return (
        f"hypothesis: profile {settings.get_current_profile_name()!r}, seed {seed} "
        f"(the same draws: {again}pytest --hypothesis-seed={seed} ...)"
    )


def pytest_report_header(config: pytest.Config) -> str:
    return _seed_line()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if terminalreporter.stats.get("failed"):
        terminalreporter.write_line(_seed_line())

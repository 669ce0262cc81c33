"""Live equals replay, in one process: the partition processors under realistic arrival
raise exactly the alert events that ``engine.tools.replay`` raises for the same readings.

The traffic (``tests.traffic``: stations appearing mid-run, flood waves and storms,
store-and-forward backlogs, outages, duplicates, out-of-order readings within the
lateness, bursts) goes through the modelled live path
(``tests.differential.live_model``: random ingest batching, the gateway's partition
split, partitions lagging one another, restarts from checkpoints) and is compared with
``replay`` event for event (fingerprint, levels, ``at``, ``started_at``;
``tests.differential.compare``). Basin (corroboration) rules are compared end to end
in ``tests/integration/test_live_equals_replay.py``.

Two tests: one realistic seeded run (all twelve gauges, 30 h, every kind of disorder),
and a Hypothesis property over traffic shapes, batchings, partition counts and restart
plans that shrinks a failure to a small traffic (few stations, few hours, one kind of
disorder) and prints it.

Longer runs on request:

* ``VIGIL_DIFF_EXAMPLES=500``: Hypothesis examples (default 25);
* ``VIGIL_DIFF_SEED=N``: the seed of the realistic run (default 20240630); a failure
  prints the seed and the traffic's description;
* ``VIGIL_DIFF_SPEC="backlogs=0,shuffle_rate=0"``: the realistic run with some of its
  traffic's fields changed (``tests.traffic.TrafficSpec``), to narrow a failure down.

``python -m tests.differential --help`` runs one comparison from the command line and
prints the events of both sides.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.contracts.ruleset import RuleSet
from engine.tools.replay import replay
from rules.api import load_ruleset
from rules.registry import load_registry
from tests.differential.compare import Diff, compare, cutoff, timed_compounds
from tests.differential.live_model import run_live
from tests.traffic import REGISTRY, RULES, Traffic, TrafficSpec, generate, spec_from_env

#: The gateway's lateness in these runs: above the generator's out-of-order delays.
LATENESS_MS = 10 * 60_000
EXAMPLES = int(os.environ.get("VIGIL_DIFF_EXAMPLES", "25"))
SEED = int(os.environ.get("VIGIL_DIFF_SEED", "20240630"))


@functools.cache
def _ruleset() -> RuleSet:
    return load_ruleset([str(RULES)], load_registry(REGISTRY)).ruleset


@functools.cache
def _aligned_ruleset() -> RuleSet:
    """The flood rules with their windows aligned to local time as ``align``/``tz`` do
    (``ThresholdRule.window_shift_ms``, closed on the right): 15-min windows from :07,
    the hourly rise from :30 (India's half hour), the rolling rain's 10-min steps from :05."""
    shifts = {15 * 60_000: 7 * 60_000, 60 * 60_000: 30 * 60_000, 10 * 60_000: 5 * 60_000}
    rules = tuple(
        dataclasses.replace(
            r, window_shift_ms=shifts[r.slide_ms or r.window_ms], window_closed_right=True
        )
        for r in _ruleset().rules
    )
    return dataclasses.replace(_ruleset(), rules=rules)


def _differences(
    traffic: Traffic, *, partitions: int, plan: int, ruleset: RuleSet | None = None
) -> Diff:
    ruleset = ruleset or _ruleset()
    live = run_live(ruleset, traffic, partitions=partitions, lateness_ms=LATENESS_MS, plan=plan)
    basin = {r.rule_id for r in ruleset.corroboration}
    expected = [e for e in replay(ruleset, traffic.readings()) if e.rule_id not in basin]
    until = cutoff(traffic.end_ms, LATENESS_MS)
    return compare(live.events, expected, until, traffic.disorder_ms, timed_compounds(ruleset))


def test_realistic_traffic_raises_what_replay_raises() -> None:
    traffic = generate(spec_from_env(TrafficSpec(seed=SEED)))
    diff = _differences(traffic, partitions=4, plan=SEED)
    assert diff.compared > 50  # the traffic does raise alerts: the comparison means something
    if diff:
        pytest.fail(f"VIGIL_DIFF_SEED={SEED}: {traffic.describe()}, 4 partitions\n{diff.report()}")


def test_windows_aligned_to_local_time_raise_what_replay_raises() -> None:
    traffic = generate(spec_from_env(TrafficSpec(seed=SEED)))
    diff = _differences(traffic, partitions=3, plan=SEED + 1, ruleset=_aligned_ruleset())
    assert diff.compared > 50
    if diff:
        pytest.fail(f"VIGIL_DIFF_SEED={SEED}: {traffic.describe()}, aligned\n{diff.report()}")


traffic_specs = st.builds(
    TrafficSpec,
    seed=st.integers(0, 2**16),
    stations=st.integers(1, 12),
    hours=st.sampled_from([6.0, 12.0, 30.0]),
    late_starters=st.integers(0, 3),
    backlogs=st.integers(0, 3),
    outages=st.integers(0, 1),
    duplicate_rate=st.sampled_from([0.0, 0.05]),
    shuffle_rate=st.sampled_from([0.0, 0.05]),
    bursts=st.integers(0, 2),
    floods=st.integers(1, 2),
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=traffic_specs, partitions=st.integers(1, 6), plan=st.integers(0, 2**32 - 1))
def test_any_batching_interleaving_and_restart_raises_what_replay_raises(
    spec: TrafficSpec, partitions: int, plan: int
) -> None:
    traffic = generate(spec)
    diff = _differences(traffic, partitions=partitions, plan=plan)
    if diff:
        pytest.fail(f"{traffic.describe()}, {partitions} partitions, plan {plan}\n{diff.report()}")

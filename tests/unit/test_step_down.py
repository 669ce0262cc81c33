"""``step_down: reading`` (issue 18 item 6): a level is left on the first reading back
past its line by the deadband, not when the window that held the high reading closes;
``for`` still times the entry. The Oso Creek rule tests (written from the NWS stages)
pass with it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from engine.contracts.batch import TelemetryBatch
from engine.contracts.ruleset import RuleSet, ThresholdRule
from engine.evaluation.processor import PartitionProcessor
from engine.tools.cli import main
from engine.tools.replay import replay
from rules import check_paths
from rules.api import load_ruleset

ROOT = Path(__file__).resolve().parents[2]
OSO_TESTS = ROOT / "rules" / "examples" / "oso_creek" / "tests.yaml"
PACKS = ROOT / "rules" / "packs"
MIN = 60_000


def _rule(step_down: str, for_ms: int = 10 * MIN) -> ThresholdRule:
    """Yellow at 4.50 m, orange at 5.00 m, a 5 cm deadband, ``for: 10m`` (by default) on
    a 15-min max window."""
    return ThresholdRule(
        rule_id="r", metric="water_level", stations=("G",),
        thresholds=np.array([[np.nan, 4.5, 5.0, np.nan]]), window_ms=15 * MIN,
        deadband=0.05, for_ms=for_ms, step_down=step_down,  # type: ignore[arg-type]
    )  # fmt: skip


# Every 5 min: on the line at 00:05 (yellow once held 10 min, at 00:15), 4.47 within the
# deadband at 00:20, 4.44 past it at 00:25, back on the line at 00:30.
LEVELS = [4.40, 4.50, 4.55, 4.60, 4.47, 4.44, 4.50, 4.52, 4.51]
READINGS = [("G", "water_level", j * 5 * MIN, v) for j, v in enumerate(LEVELS)]


def _transitions(step_down: str, batch_size: int = 10_000) -> list[tuple[str, int, float]]:
    events = replay(RuleSet((_rule(step_down),)), READINGS, batch_size)
    return [(e.level, e.at // MIN, e.value) for e in events]


def test_step_down_on_the_reading_past_the_deadband_and_for_again_to_return() -> None:
    expected = [("yellow", 15, 4.60), ("none", 25, 4.44), ("yellow", 40, 4.52)]
    assert _transitions("reading") == expected
    assert _transitions("reading", batch_size=1) == expected  # batching changes nothing


def test_the_default_steps_down_when_a_window_closes() -> None:
    # [00:15, 00:30) holds 4.60 and [00:30, 00:45) 4.52: both hold the line - 5 cm.
    assert _transitions("window") == [("yellow", 15, 4.60)]


def test_oso_creek_rule_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    """Every NWS transition of the April 2023 flood at its sample, step-downs included."""
    assert main(["rules", "test", str(OSO_TESTS)]) == 0, capsys.readouterr().out


def test_the_level_rules_of_the_packs_step_down_on_the_reading() -> None:
    """What hydrologists expect: the all-clear at the first reading below the line minus
    the deadband (order-proof since a reading taken before a step-down that arrives
    after it no longer raises again what the step-down left)."""
    flood = load_ruleset([PACKS / "flood.yaml"], PACKS / "demo_stations.yaml").ruleset
    dam = load_ruleset([PACKS / "dam_seepage.yaml"], PACKS / "demo_dam_stations.yaml").ruleset
    steps = {r.rule_id: r.step_down for r in (*flood.rules, *dam.rules)}
    assert steps["flood.river_level"] == steps["dam.reservoir_level"] == "reading"


def test_rules_check_refuses_step_down_on_the_reading_of_a_mean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("s.yaml").write_text(
        "stations:\n  - {id: G, kind: river_gauge, metrics: {water_level: m}}\n", encoding="utf-8"
    )
    Path("r.yaml").write_text("version: 1\nrules:\n" + textwrap.dedent("""\
      - id: mean
        select: {ids: [G]}
        metric: water_level
        window: {size: 1h, aggregate: mean}
        levels: {yellow: {above: 4.5}}
        step_down: reading
    """), encoding="utf-8")  # fmt: skip
    assert check_paths(["r.yaml"], "s.yaml") == [
        "r.yaml:8:3: step_down: 'reading' needs a tumbling max window above, "
        "or min below; this is a mean window above"
    ]


def _events(rule: ThresholdRule, batches: list[list[tuple[int, float]]]) -> list[tuple]:
    """(previous, level, at min, started_at min) of the batches (minute, metres) taken
    in arrival order by a partition's processor, as the live agent takes them."""
    proc = PartitionProcessor(RuleSet((rule,)), lateness_ms=15 * MIN)
    events = []
    for offset, rows in enumerate(batches):
        batch = TelemetryBatch.from_rows([("G", "water_level", m * MIN, v) for m, v in rows])
        events += proc.process(batch, offset)
    events += proc.close_windows(2**62)
    return [(e.previous_level, e.level, e.at // MIN, e.started_at // MIN) for e in events]


def _replayed(rule: ThresholdRule, batches: list[list[tuple[int, float]]]) -> list[tuple]:
    readings = [("G", "water_level", m * MIN, v) for rows in batches for m, v in rows]
    return [
        (e.previous_level, e.level, e.at // MIN, e.started_at // MIN)
        for e in replay(RuleSet((rule,)), readings)
    ]


def test_readings_taken_before_the_step_down_arriving_after_it_raise_nothing() -> None:
    """Yellow from 00:15 (on the line since 00:05); 4.40 at 00:40 steps down. The 00:30
    and 00:35 readings (4.60, of the same window) reach the gateway after it: the
    step-down decided them. They used to start a breach run 10 min before 00:40 and
    raise yellow again at 00:40, where the replay (in event time) stays clear."""
    rule = _rule("reading")
    rise = [(m, 4.60) for m in range(5, 30, 5)]
    batches = [[(0, 4.40), *rise, (40, 4.40)], [(30, 4.60), (35, 4.60)], [(45, 4.40)]]
    expected = [("none", "yellow", 15, 15), ("yellow", "none", 40, 15)]
    assert _replayed(rule, batches) == expected
    assert _events(rule, batches) == expected


def test_a_reading_of_the_previous_window_before_the_step_down_raises_nothing() -> None:
    """Without ``for``: yellow at 00:15; 4.40 at 00:30, the next window's first reading,
    steps down; 4.60 at 00:25 arrives after it, within the lateness. It used to raise
    yellow again at 00:25 (a late escalation); the step-down had decided it."""
    rule = _rule("reading", for_ms=0)
    batches = [[(15, 4.60), (20, 4.60), (30, 4.40)], [(25, 4.60)], [(35, 4.40)]]
    expected = [("none", "yellow", 15, 15), ("yellow", "none", 30, 15)]
    assert _replayed(rule, batches) == expected
    assert _events(rule, batches) == expected


def test_a_breach_above_the_level_left_still_raises_at_its_own_time() -> None:
    """Without ``for``: yellow at 00:15, 4.40 at 00:40 leaves it; 5.10 (orange) at 00:35
    arrives after that. The step-down never saw an orange reading: the alert is raised
    at its own time, within the episode that the step-down ended, and the next reading
    lifts it. Nothing is missed; the all-clear comes one reading later than the replay's."""
    rule = _rule("reading", for_ms=0)
    batches = [[(15, 4.60), (30, 4.60), (40, 4.40)], [(35, 5.10)], [(45, 4.40)]]
    assert _replayed(rule, batches) == [
        ("none", "yellow", 15, 15), ("yellow", "orange", 35, 15), ("orange", "none", 40, 15),
    ]  # fmt: skip
    assert _events(rule, batches) == [
        ("none", "yellow", 15, 15), ("yellow", "none", 40, 15), ("none", "orange", 35, 15),
        ("orange", "none", 45, 15),
    ]  # fmt: skip

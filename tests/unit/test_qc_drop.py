"""``qc.drop: [suspect]``: a reading that QC flags suspect moves no level, on both
evaluation paths (the early-firing tumbling kernel and the window chain), in ``replay``
and through the modelled live path (ingest batching, partitions, restarts).

The issue's reproduction: 0.50, 0.52, **5.20**, 0.53 m with ``max_step: 0.2`` used to
raise a yellow and an all-clear. With ``drop: [suspect]`` it raises nothing; without it
(the control) the same readings do raise, so the test is about the drop and nothing else.
The gateway itself (MQTT in, alerts out) is tested in
``tests/integration/test_qc_drop_gateway.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.contracts.alerts import AlertEvent
from engine.contracts.ruleset import RuleSet
from engine.tools.replay import replay
from rules.api import load_ruleset
from rules.registry import load_registry
from tests.differential.live_model import run_live
from tests.traffic import Message, Traffic, TrafficSpec

T0 = 1_719_763_200_000
STEP = 5 * 60_000
SPIKE = [0.50, 0.52, 5.20, 0.53]
#: A real rise in steps of at most 0.2 m: it must still raise (nothing good is dropped).
RISE = [0.60, 0.75, 0.90, 1.05, 1.20]

STATIONS = """\
stations:
  - id: G1
    kind: river_gauge
    name: gauge one
    report_interval: 5m
    metrics: {water_level: m}
"""


def rules_yaml(drop: str) -> str:
    """Two rules on the same metric: ``max`` early-fires, ``last`` runs the window chain."""
    qc = f"{{max_step: 0.2{', drop: [suspect]' if drop else ''}}}"
    return f"""\
version: 1
rules:
  - id: early
    select: {{ids: [G1]}}
    metric: water_level
    window: {{size: 15m, aggregate: max}}
    levels: {{yellow: {{above: 1.0}}}}
    qc: {qc}
  - id: chain
    select: {{ids: [G1]}}
    metric: water_level
    window: {{size: 15m, aggregate: last}}
    levels: {{yellow: {{above: 1.0}}}}
    qc: {qc}
"""


def _ruleset(tmp_path: Path, drop: bool) -> RuleSet:
    (tmp_path / "stations.yaml").write_text(STATIONS)
    (tmp_path / "rules.yaml").write_text(rules_yaml("drop" if drop else ""))
    registry = load_registry(tmp_path / "stations.yaml")
    return load_ruleset([str(tmp_path / "rules.yaml")], registry).ruleset


def _readings(values: list[float], start: int = T0) -> list[tuple[str, str, int, float]]:
    return [("G1", "water_level", start + i * STEP, v) for i, v in enumerate(values)]


def _transitions(events: list[AlertEvent]) -> list[tuple[str, str, int]]:
    return sorted((e.rule_id, e.level, e.at) for e in events if "#" not in e.rule_id)


def test_runners_cover_both_paths(tmp_path: Path) -> None:
    from engine.evaluation.processor import PartitionProcessor
    from engine.evaluation.runners.tumbling import TumblingRunner
    from engine.evaluation.runners.windowed import WindowedRunner

    proc = PartitionProcessor(_ruleset(tmp_path, drop=True))
    assert isinstance(proc.runner("early"), TumblingRunner)
    assert isinstance(proc.runner("chain"), WindowedRunner)


def test_dropped_suspect_moves_no_level_in_replay(tmp_path: Path) -> None:
    spike = _readings(SPIKE)
    kept = replay(_ruleset(tmp_path, drop=False), spike)
    assert {e.rule_id for e in kept if e.level == "yellow"} == {"early", "chain"}  # control
    assert _transitions(replay(_ruleset(tmp_path, drop=True), spike)) == []


def test_a_real_rise_still_raises_when_suspects_are_dropped(tmp_path: Path) -> None:
    readings = _readings(SPIKE) + _readings(RISE, T0 + 6 * STEP)
    events = _transitions(replay(_ruleset(tmp_path, drop=True), readings))
    rise_at = T0 + (6 + 3) * STEP  # 1.05 m, the first reading at or above 1.0
    assert ("early", "yellow", rise_at) in events
    assert all(at >= rise_at for _, _, at in events)


def _traffic(values: list[float]) -> Traffic:
    readings = _readings(values)
    messages = tuple(Message(ts + 1_000, s, m, ((ts, v),), 1, "live") for s, m, ts, v in readings)
    end = readings[-1][2]
    return Traffic(TrafficSpec(stations=1), T0, end, ("G1",), messages)


@pytest.mark.parametrize("plan", range(8))
def test_dropped_suspect_moves_no_level_on_the_live_path(tmp_path: Path, plan: int) -> None:
    values = [*SPIKE, 0.54, 0.55, 0.56]  # later readings close the spike's windows live
    traffic = _traffic(values)
    for drop in (False, True):
        ruleset = _ruleset(tmp_path, drop=drop)
        live = run_live(ruleset, traffic, partitions=2, lateness_ms=0, plan=plan)
        expected = replay(ruleset, traffic.readings(), flush=False)
        got = sorted({(e.rule_id, e.level, e.at) for e in live.events if "#" not in e.rule_id})
        assert got == _transitions(expected)
        assert bool(got) is not drop  # the control raises; the drop raises nothing

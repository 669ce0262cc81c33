"""The runner factory: picks a rule's runner, so that ``base`` never imports the
runners that implement it."""

from __future__ import annotations

from engine.contracts.ruleset import ThresholdRule
from engine.evaluation.runners.base import Runner
from engine.evaluation.runners.tumbling import TumblingRunner
from engine.evaluation.runners.windowed import WindowedRunner

__all__ = ["runner_for"]


def runner_for(rule: ThresholdRule, lateness_ms: int, *, early_firing: bool = True) -> Runner:
    """The runner for ``rule``; ``early_firing=False`` forces the window chain (which
    reports every closed window's aggregate, for replays that record them)."""
    monotone = (rule.aggregate, rule.direction) in (("max", 1), ("min", -1))
    monotone = monotone and not rule.slide_ms  # the early-firing kernel tumbles
    if monotone and early_firing:
        return TumblingRunner(rule, lateness_ms)
    return WindowedRunner(rule, lateness_ms)

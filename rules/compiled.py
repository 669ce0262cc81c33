"""Compiled forms of the rules, as plain frozen dataclasses.

The engine's own contract lives in ``engine.contracts.ruleset`` (threshold, compound,
corroboration rules and derived metrics, re-exported here). A threshold rule's reading
checks are its ``ThresholdRule.qc`` (``engine.contracts.ruleset.QcLimits``).

Arrays are per station, in the order of ``stations``; values in the metric's unit; NaN
means "not used at this station"; times in ms.
"""

from __future__ import annotations

from engine.contracts.ruleset import (
    CompiledCondition,
    CompoundRule,
    CorroborationRule,
    DerivedMetric,
)

__all__ = [
    "CompiledCondition",
    "CompoundRule",
    "CorroborationRule",
    "DerivedMetric",
]

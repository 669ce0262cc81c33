"""Compiled forms of the rules, as plain frozen dataclasses.

The engine's own contract lives in ``engine.contracts.ruleset`` (threshold, compound,
corroboration rules and derived metrics, re-exported here). ``QCParams`` records the
reading checks of one rule's metric, as written; the engine takes them as
``ThresholdRule.qc``.

Arrays are per station, in the order of ``stations``; values in the metric's unit; NaN
means "not used at this station"; times in ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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
    "QCParams",
]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class QCParams:
    """Reading checks applied to ``metric`` before the rule aggregates it."""

    rule_id: str
    metric: str
    min: float | None
    max: float | None
    max_step: float | None
    flatline_ms: int | None
    drop: tuple[str, ...]

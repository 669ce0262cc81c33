"""Compiled forms the engine does not run yet, as plain frozen dataclasses.

``engine.ruleset.ThresholdRule`` is the contract for simple threshold rules. The forms
here are the compiler's output for the rest, ready for when the kernels exist:

- ``WindowThresholdRule``: a threshold rule whose aggregate the engine's ThresholdRule
  does not accept yet (``sum`` for rainfall accumulation, ``delta`` for rate of rise,
  ``first``, ``count``). Same fields and meaning as ThresholdRule otherwise.
- ``DerivedMetric``: how to compute a derived series before thresholds apply.
- ``CompoundRule``: all/any of several metric conditions at one station.
- ``CorroborationRule``: k stations of a group at or above a level of another rule.
- ``QCParams``: reading checks of one rule's metric.

Arrays are per station, in the order of ``stations``; values in the metric's unit; NaN
means "not used at this station"; times in ms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from engine.ruleset import CompiledCondition, CompoundRule, CorroborationRule, DerivedMetric

__all__ = [
    "CompiledCondition",
    "CompoundRule",
    "CorroborationRule",
    "DerivedMetric",
    "QCParams",
    "WindowThresholdRule",
]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class WindowThresholdRule:
    """A ThresholdRule with an aggregate the engine does not take yet (sum, delta …)."""

    rule_id: str
    metric: str
    stations: tuple[str, ...]
    thresholds: FloatArray  # (len(stations), 4); NaN = level unused
    direction: Literal[1, -1]
    window_ms: int
    aggregate: str
    deadband: float
    for_ms: int
    stale_ms: int
    summary: str
    resolved_summary: str
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


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

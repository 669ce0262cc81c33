"""Compile (or load from numba's on-disk cache) every kernel before taking traffic.

numba compiles a kernel on its first call. Without this, a gateway's first batch after
a cold start would stall for tens of seconds while the event loop is blocked, which is
also when a shutdown request would go unanswered. With ``cache=True`` a warm start only
loads the compiled code: about a second.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from engine.contracts.batch import TelemetryBatch
from engine.contracts.ruleset import QcLimits, RuleSet, ThresholdRule
from engine.evaluation.processor import PartitionProcessor

__all__ = ["warm_kernels"]

log = logging.getLogger(__name__)

_THRESHOLDS = np.array([[1.0, 2.0, 3.0, 4.0]])


def _rules() -> RuleSet:
    """One rule per runner kind, with QC and staleness, and an AQI rule for the deriver."""
    qc = QcLimits(min=-10.0, max=100.0, max_step=5.0, flat_n=3)
    base = dict(stations=("W",), thresholds=_THRESHOLDS, qc=qc, stale_ms=3_600_000, for_ms=60_000)
    return RuleSet(
        (
            ThresholdRule("warm.max", "m1", **base),  # type: ignore[arg-type]
            ThresholdRule("warm.sum", "m1", aggregate="sum", **base),  # type: ignore[arg-type]
            ThresholdRule(
                "warm.slide",
                "m1",
                aggregate="delta",
                window_ms=3_600_000,
                slide_ms=900_000,
                **base,  # type: ignore[arg-type]
            ),
            ThresholdRule("warm.aqi", "aqi", aggregate="last", **base),  # type: ignore[arg-type]
        )
    )


def warm_kernels() -> float:
    """Run every kernel once on a tiny batch; returns the seconds it took."""
    start = time.perf_counter()
    proc = PartitionProcessor(_rules(), lateness_ms=0, clock=lambda: 10**13)
    rows = [("W", "m1", k * 300_000, 0.5 * k) for k in range(20)]
    rows += [("W", p, k * 3_600_000, 10.0) for k in range(3) for p in ("pm2_5", "o3", "no2")]
    proc.process(TelemetryBatch.from_rows(rows), 0)
    proc.close_windows(10**12)
    seconds = time.perf_counter() - start
    log.info("kernels ready in %.1f s", seconds)
    return seconds

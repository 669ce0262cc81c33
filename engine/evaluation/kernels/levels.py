"""Four-level threshold evaluation with for-duration, hysteresis and staleness.

Contract
--------
Each sensor has four thresholds (blue, yellow, orange, red = levels 1..4; a row of
``thresholds``, shape (n_sensors, 4), in the metric's unit; NaN = level unused) and the
rule's ``direction`` (+1 "above", −1 "below"). For a value ``v``:

- level ``j`` is *breached* when ``direction * (v - thr_j) >= 0``; the raw level is the
  highest breached level (so equal thresholds jump straight to the higher level);
- **escalation**: the sensor enters level ``j`` above its current one when ``j`` has been
  breached continuously for at least ``for_ms`` (by the evaluations' event times; 0 =
  at once). The highest such level is entered;
- **de-escalation** (no for-duration): level ``j`` is held while
  ``direction * (v - thr_j) >= -deadband``; the sensor drops to the highest level at or
  below its current one that is still held (0 = "all clear");
- **staleness**: :func:`levels_check_silence` reports a ``SILENT`` transition for each
  sensor whose last evaluation is more than ``stale_ms`` before ``now_ms`` (event time
  ``last_ts + stale_ms``); the next evaluation of that sensor first reports
  ``RETURNED``. Silence does not change the level. Sensors never evaluated are not
  reported (their start is unknown). ``stale_ms = 0`` turns the check off.

Evaluations come per sensor in event-time order (closed windows from
:mod:`engine.evaluation.kernels.windows` are); an evaluation older than the sensor's last one, or
with a NaN value, is ignored.

Output: only transitions, as parallel arrays (``Transitions``): sensor, from_level,
to_level, event time (ms, UTC), value, threshold and kind (``LEVEL``, ``SILENT``,
``RETURNED``). ``threshold`` is that of the higher of the two levels (the one entered on
escalation, the one left on de-escalation); NaN for SILENT/RETURNED.

State: one packed 42-byte record per sensor (level, silent flag, last evaluation time,
and for each level the time since which it has been breached).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from numba import njit

from engine.evaluation.kernels._common import NO_TS, check_sensors

__all__ = [
    "LEVEL",
    "LEVELS_STATE_DTYPE",
    "RETURNED",
    "SILENT",
    "LevelParams",
    "Transitions",
    "levels_check_silence",
    "levels_evaluate",
    "new_levels_state",
]

LEVEL, SILENT, RETURNED = 0, 1, 2
N_LEVELS = 4

#: One record per sensor; packed, 42 bytes.
LEVELS_STATE_DTYPE = np.dtype(
    [("level", "u1"), ("silent", "u1"), ("last_ts", "i8"), ("since", "i8", (N_LEVELS,))]
)


@dataclass(frozen=True)
class LevelParams:
    """Compiled rule parameters (see ``engine.contracts.ruleset.ThresholdRule``)."""

    thresholds: npt.NDArray[np.float64]  # (n_sensors, 4)
    direction: int = 1
    deadband: float = 0.0
    for_ms: int = 0
    stale_ms: int = 0

    def __post_init__(self) -> None:
        if self.thresholds.ndim != 2 or self.thresholds.shape[1] != N_LEVELS:
            raise ValueError(f"thresholds must have shape (n, 4), got {self.thresholds.shape}")
        if self.direction not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, got {self.direction}")
        if self.deadband < 0 or self.for_ms < 0 or self.stale_ms < 0:
            raise ValueError("deadband, for_ms and stale_ms must be >= 0")


class Transitions(NamedTuple):
    sensor: npt.NDArray[np.int64]
    from_level: npt.NDArray[np.uint8]
    to_level: npt.NDArray[np.uint8]
    ts: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    threshold: npt.NDArray[np.float64]
    kind: npt.NDArray[np.uint8]


def new_levels_state(n_sensors: int) -> npt.NDArray[np.void]:
    """Every sensor at level 0, never evaluated, not silent."""
    state = np.zeros(n_sensors, dtype=LEVELS_STATE_DTYPE)
    state["last_ts"] = NO_TS
    state["since"] = NO_TS
    return state


def levels_evaluate(
    state: npt.NDArray[np.void],
    params: LevelParams,
    sensor: npt.NDArray[np.integer],
    ts: npt.NDArray[np.int64],
    value: npt.NDArray[np.float64],
) -> Transitions:
    """Evaluate values (e.g. closed-window aggregates) and return the transitions."""
    if len(ts) == 0:  # most batches close no window: skip the dispatch
        return Transitions(*_EMPTY)
    check_sensors(sensor, len(state), "levels_evaluate")
    if len(params.thresholds) != len(state):
        raise ValueError(
            f"levels_evaluate: {len(params.thresholds)} threshold rows for {len(state)} sensors"
        )
    out = _evaluate_kernel(
        state["level"],
        state["silent"],
        state["last_ts"],
        state["since"],
        np.ascontiguousarray(params.thresholds, dtype=np.float64),
        float(params.direction),
        float(params.deadband),
        int(params.for_ms),
        sensor,
        ts,
        value,
    )
    return Transitions(*out)


def levels_check_silence(
    state: npt.NDArray[np.void], params: LevelParams, now_ms: int
) -> Transitions:
    """Report sensors silent for more than ``stale_ms`` at ``now_ms`` (all sensors)."""
    if params.stale_ms <= 0:
        return Transitions(*_EMPTY)
    return Transitions(
        *_silence_kernel(state["level"], state["silent"], state["last_ts"], params.stale_ms, now_ms)
    )


_EMPTY = (
    np.empty(0, dtype=np.int64),
    np.empty(0, dtype=np.uint8),
    np.empty(0, dtype=np.uint8),
    np.empty(0, dtype=np.int64),
    np.empty(0, dtype=np.float64),
    np.empty(0, dtype=np.float64),
    np.empty(0, dtype=np.uint8),
)


@njit(cache=True)
def _empty(n):  # type: ignore[no-untyped-def]
    return (
        np.empty(n, dtype=np.int64),
        np.empty(n, dtype=np.uint8),
        np.empty(n, dtype=np.uint8),
        np.empty(n, dtype=np.int64),
        np.empty(n, dtype=np.float64),
        np.empty(n, dtype=np.float64),
        np.empty(n, dtype=np.uint8),
    )


@njit(cache=True)
def _evaluate_kernel(  # type: ignore[no-untyped-def]
    level, silent, last_ts, since, thr, direction, deadband, for_ms, sensor, ts, value
):
    n = ts.shape[0]
    o_s, o_f, o_t, o_ts, o_v, o_thr, o_k = _empty(2 * n)
    j = 0
    for i in range(n):
        v = value[i]
        if np.isnan(v):
            continue
        s = sensor[i]
        t = ts[i]
        if last_ts[s] != NO_TS and t < last_ts[s]:
            continue
        c = level[s]
        if silent[s]:
            silent[s] = 0
            o_s[j], o_f[j], o_t[j], o_ts[j] = s, c, c, t
            o_v[j], o_thr[j], o_k[j] = v, np.nan, RETURNED
            j += 1
        last_ts[s] = t
        raw = 0
        for lv in range(N_LEVELS):
            if direction * (v - thr[s, lv]) >= 0.0:
                raw = lv + 1
        up = 0
        for lv in range(N_LEVELS):
            if raw > lv:
                if since[s, lv] == NO_TS:
                    since[s, lv] = t
                if lv + 1 > c and t - since[s, lv] >= for_ms and not np.isnan(thr[s, lv]):
                    up = lv + 1
            else:
                since[s, lv] = NO_TS
        new = c
        if up > c:
            new = up
        else:
            hold = 0
            for lv in range(c):
                if direction * (v - thr[s, lv]) >= -deadband:
                    hold = lv + 1
            if hold < c:
                new = hold
        if new != c:
            o_s[j], o_f[j], o_t[j], o_ts[j], o_v[j], o_k[j] = s, c, new, t, v, LEVEL
            o_thr[j] = thr[s, max(new, c) - 1]
            j += 1
            level[s] = new
    return o_s[:j], o_f[:j], o_t[:j], o_ts[:j], o_v[:j], o_thr[:j], o_k[:j]


@njit(cache=True)
def _silence_kernel(level, silent, last_ts, stale_ms, now_ms):  # type: ignore[no-untyped-def]
    n = level.shape[0]
    cnt = 0
    for s in range(n):
        if not silent[s] and last_ts[s] != NO_TS and now_ms - last_ts[s] > stale_ms:
            cnt += 1
    o_s, o_f, o_t, o_ts, o_v, o_thr, o_k = _empty(cnt)
    j = 0
    for s in range(n):
        if not silent[s] and last_ts[s] != NO_TS and now_ms - last_ts[s] > stale_ms:
            silent[s] = 1
            o_s[j], o_f[j], o_t[j], o_ts[j] = s, level[s], level[s], last_ts[s] + stale_ms
            o_v[j], o_thr[j], o_k[j] = np.nan, np.nan, SILENT
            j += 1
    return o_s, o_f, o_t, o_ts, o_v, o_thr, o_k

"""The per-reading steps of the early-firing tumbling kernel (``tumbling_levels``):
QC, sensor health, thresholds and levels, each on one sensor's block.

numba compiles these into the kernels that call them (LLVM inlines them, as it did
when they sat in one module). Only the rare paths (a transition, a health change)
take output arrays: numba reference-counts every array argument, which on the
per-reading path cost 2x.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from engine.evaluation.kernels._common import (
    MS_PER_HOUR,
    NO_TS,
    Q_FAIL,
    Q_GOOD,
    Q_MISSING,
    Q_SUSPECT,
)
from engine.evaluation.kernels._tumbling_state import (
    AGE_CAP,
    FLAT_CAP,
    LEVEL_MASK,
    QC_ALERT_BIT,
    RUN_CAP,
    SILENT_BIT,
)
from engine.evaluation.kernels.health import QC, SILENT


@njit(cache=True)
def as_i64(x):  # type: ignore[no-untyped-def]
    """``x`` as int64: numba would type a uint8 field's bits as uint64, and uint64 with
    int64 unifies to float64."""
    return np.int64(x)


@njit(cache=True)
def qc_step(st, p, future_lim, past_lim, t, v, qi):  # type: ignore[no-untyped-def]
    """The reading's QC flag; advances the QC fields (see ``engine.evaluation.kernels.qc``)."""
    if np.isnan(v):
        return Q_MISSING
    if t > future_lim or t < past_lim or v < p.fail_lo or v > p.fail_hi:
        return max(Q_FAIL, qi)
    q = Q_GOOD
    if v < p.suspect_lo or v > p.suspect_hi:
        q = Q_SUSPECT
    pt = st["qc_ts"]
    run = 1
    if pt != NO_TS:
        dv = abs(v - st["qc_value"])
        if dv > p.spike:
            q = Q_SUSPECT
        if t > pt and dv / (t - pt) * MS_PER_HOUR > p.rate_per_h:
            q = Q_SUSPECT
        if dv <= p.flat_eps:
            run = min(st["flat_run"] + 1, FLAT_CAP)
    if p.flat_fail_n > 0 and run >= p.flat_fail_n:
        q = Q_FAIL
    elif p.flat_suspect_n > 0 and run >= p.flat_suspect_n and q < Q_SUSPECT:
        q = Q_SUSPECT
    if qi > q:
        q = qi
    if qi != Q_FAIL and qi != Q_MISSING:
        st["qc_value"] = v
        st["qc_ts"] = t
        st["flat_run"] = run
    return q


@njit(cache=True)
def window_start(t, w, shift):  # type: ignore[no-untyped-def]
    """The start (ms) of the ``w``-ms window holding ``t``: windows start where
    ``(start + shift) % w == 0`` (``Params.shift_ms``: 0 aligns them to the epoch)."""
    return t - (t + shift) % w


# Health events of one reading, bits of ``health_step``'s result.
EV_SILENCE_OVER, EV_RUN_BEGINS, EV_QC_FIRES, EV_QC_CLEARS = 1, 2, 4, 8


@njit(cache=True)
def health_step(st, fail_after, current_from, t, q):  # type: ignore[no-untyped-def]
    """Track QC failure runs and silence (see ``engine.evaluation.kernels.health``: a
    reading before ``current_from`` neither ends a silence nor moves its start); returns
    the reading's health events (``EV_*`` bits, 0 in the common case)."""
    h = as_i64(st["health"])
    ev = 0
    if h & SILENT_BIT and t >= current_from:
        h &= ~SILENT_BIT
        ev |= EV_SILENCE_OVER
    if t > st["seen_ts"] and not h & SILENT_BIT:
        st["seen_ts"] = t
    run = h & RUN_CAP
    if q == Q_FAIL:
        if run == 0:
            ev |= EV_RUN_BEGINS
        run = min(run + 1, RUN_CAP)
        if run >= fail_after and not h & QC_ALERT_BIT:
            h |= QC_ALERT_BIT
            ev |= EV_QC_FIRES
    else:
        run = 0
        if h & QC_ALERT_BIT:
            h &= ~QC_ALERT_BIT
            ev |= EV_QC_CLEARS
    st["health"] = (h & ~RUN_CAP) | run
    return ev


@njit(cache=True)
def health_out(hc, n, st, i, ev, t, seen, v):  # type: ignore[no-untyped-def]
    """Write the health changes of events ``ev`` (``seen``: the sensor's newest reading
    before this one)."""
    if ev & EV_SILENCE_OVER:
        n = health_change(hc, n, i, SILENT, 0, t, seen, v)
    if ev & EV_RUN_BEGINS:
        st["fail_since"] = t
    if ev & EV_QC_FIRES:
        n = health_change(hc, n, i, QC, 1, t, st["fail_since"], v)
    if ev & EV_QC_CLEARS:
        n = health_change(hc, n, i, QC, 0, t, st["fail_since"], v)
    return n


@njit(cache=True)
def health_change(hc, n, i, kind, firing, t, since, v):  # type: ignore[no-untyped-def]
    hc[0][n] = i
    hc[1][n] = kind
    hc[2][n] = firing
    hc[3][n] = t
    hc[4][n] = since
    hc[5][n] = v
    return n + 1


@njit(cache=True)
def thresholds_of(st):  # type: ignore[no-untyped-def]
    """The sensor's four thresholds as a tuple (no array: numba would count references)."""
    return (st["thr1"], st["thr2"], st["thr3"], st["thr4"])


@njit(cache=True)
def breached(agg, thr, direction):  # type: ignore[no-untyped-def]
    """Highest level whose threshold the aggregate reaches (no deadband), 0 if none."""
    for k in range(4, 0, -1):
        t = thr[k - 1]
        if not np.isnan(t) and agg >= t * direction:
            return k
    return 0


@njit(cache=True)
def held(agg, thr, current, p):  # type: ignore[no-untyped-def]
    """Highest level at or below ``current`` still held within the deadband, 0 if none."""
    for k in range(current, 0, -1):
        t = thr[k - 1]
        if not np.isnan(t) and agg >= t * p.direction - p.deadband:
            return k
    return 0


@njit(cache=True)
def emit(tr, n, st, i, frm, to, t, agg, thr, direction):  # type: ignore[no-untyped-def]
    tr[6][n] = st["episode_start"]  # this transition's own, not the batch's last
    tr[0][n] = i
    tr[1][n] = frm
    tr[2][n] = to
    tr[3][n] = t
    tr[4][n] = agg * direction
    # Report the threshold of the level entered, or of the level left when clearing.
    tr[5][n] = thr[(to if to > 0 else frm) - 1]
    return n + 1


@njit(cache=True)
def close_open(st, thr, p):  # type: ignore[no-untyped-def]
    """Close the sensor's open window: drop to the highest level still held. Returns
    the level before and after. The aggregate stays: a watermark's close may reopen."""
    current = as_i64(st["levels"]) & LEVEL_MASK
    new = held(st["agg"], thr, current, p)
    if new < current:
        st["levels"] = (as_i64(st["levels"]) & ~LEVEL_MASK) | new
    return current, new


@njit(cache=True)
def age_of(st, k):  # type: ignore[no-untyped-def]
    if k == 1:
        return st["age1"]
    if k == 2:
        return st["age2"]
    if k == 3:
        return st["age3"]
    return st["age4"]


@njit(cache=True)
def advance_ages(st, raw, d):  # type: ignore[no-untyped-def]
    """The breach runs of levels 1..raw go on for ``d`` more ms (saturating)."""
    if raw >= 1:
        st["age1"] = min(st["age1"] + d, AGE_CAP)
    if raw >= 2:
        st["age2"] = min(st["age2"] + d, AGE_CAP)
    if raw >= 3:
        st["age3"] = min(st["age3"] + d, AGE_CAP)
    if raw >= 4:
        st["age4"] = min(st["age4"] + d, AGE_CAP)


@njit(cache=True)
def start_runs(st, raw, new_raw, age):  # type: ignore[no-untyped-def]
    """Levels raw+1..new_raw begin a breach run ``age`` ms before ``last_ts``."""
    age = min(age, AGE_CAP)
    for k in range(raw + 1, new_raw + 1):
        if k == 1:
            st["age1"] = age
        elif k == 2:
            st["age2"] = age
        elif k == 3:
            st["age3"] = age
        else:
            st["age4"] = age


@njit(cache=True)
def extend_runs(st, top, age):  # type: ignore[no-untyped-def]
    """The breach runs of levels 1..top began at least ``age`` ms before ``last_ts``."""
    age = min(age, AGE_CAP)
    if top >= 1:
        st["age1"] = max(st["age1"], age)
    if top >= 2:
        st["age2"] = max(st["age2"], age)
    if top >= 3:
        st["age3"] = max(st["age3"], age)
    if top >= 4:
        st["age4"] = max(st["age4"], age)


@njit(cache=True)
def due_level(st, thr, raw, current, for_ms):  # type: ignore[no-untyped-def]
    """The highest level above ``current`` whose breach run has lasted ``for_ms``."""
    for k in range(raw, current, -1):
        if not np.isnan(thr[k - 1]) and age_of(st, k) >= for_ms:
            return k
    return current

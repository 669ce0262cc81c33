"""The early-firing path of a tumbling-window rule, one pass per reading: quality
control, sensor health, the window's running maximum and the four levels.

Rules on ``max`` above (or ``min`` below: direction -1 flips the sign) a threshold use
this kernel. Per reading, in the order of the arrays (event-time order per sensor):

1. **QC**, exactly as :func:`engine.evaluation.kernels.qc.qc_batch` with rule-wide limits
   (``Params``; the engine's rules have no per-sensor QC limits).
2. **Sensor health**, exactly as :func:`engine.evaluation.kernels.health.observe`: a run of
   ``fail_after`` QC failures raises a QC alert, the next reading that does not fail
   clears it; a reading within ``stale`` of the partition's event time clears a silence
   alert (an older backlog chunk does not). Silence itself is found by
   :func:`silent_due` when the partition's watermark passes ``last seen + stale_ms``.
3. Readings flagged FAIL or MISSING stop here, and so do SUSPECT ones when the rule
   drops them (``Params.drop_from``). Lateness is the sensor's own, never the
   partition's: a store-and-forward backlog of a gauge whose neighbours are current is
   evaluated in the gauge's own event time. A usable reading

   * of the sensor's latest window counts, in or out of order (the running maximum does
     not depend on the order); one at exactly the last reading's time is a duplicate and
     is skipped, so a redelivered reading never counts twice (one out of order is
     idempotent: it cannot move the maximum twice);
   * of an earlier window, which the sensor's own later readings closed, is late. From
     the window just before the sensor's latest (still open) one, within the allowed
     lateness of the sensor's own time (``Params.lateness_ms``) and for a rule without
     ``for``, it can still raise the level, at its own time, though not lower it (its
     window was decided without it); otherwise it is reported in ``late`` for the
     dead-letter topic.
4. **Window and levels**, the semantics of
   :func:`engine.evaluation.kernels.tumbling_levels_reference.reference_process`:

   * escalation fires early, on the reading that pushes the running window aggregate
     over a higher threshold (the running maximum only grows within a window, so an
     early escalation is never taken back by later readings of the same window);
   * with a ``for`` duration, a level is entered on a reading whose window's running
     aggregate breaches it, once the breach run has lasted ``for_ms``. A run is broken
     only by a window that ends below the line (decided with the window's final
     aggregate when the sensor's next window opens), never by a reading while its
     window is open: the order of a window's readings changes nothing, so an
     out-of-order arrival fires when the replay of the same readings fires;
   * de-escalation is decided when a window closes, from its aggregate: a level is kept
     while the aggregate stays above ``threshold - deadband``; with ``step_down:
     reading`` (``Params.on_reading``) it is decided on each of the sensor's newest
     readings instead, at the first one back past ``threshold - deadband``, and the
     window starts over at that reading (:func:`_step_down`). A reading taken before
     the sensor's latest step-down that arrives after it was decided by it, as the
     replay in event time decides it: it counts in no window and raises only past the
     level the step-down left (``down_ts``, ``down_from``; :func:`_late_escalation`);
   * a window closes when a reading of a later window arrives for the sensor, or when
     the watermark passes its end (:func:`close_windows`), so a gauge that falls silent
     mid-flood does not hold its last window open forever. A close by the watermark
     keeps the window's aggregate (``CLOSED_BIT``): a later reading of the sensor for
     that window (a backlog that goes on in the next batch) reopens it, and the window
     is decided again when it next closes.

Windows start where ``(start + Params.shift_ms) % window_ms == 0`` (0: from the epoch;
a rule aligned to local days shifts them), and with ``Params.right`` a window holds
``(start, end]``: it is bucketed one ms on and its end reported 1 ms back, so a report
stamped on a boundary closes the window that ends there.

The state's layout and its documented limits are in ``_tumbling_state``; the
per-reading steps (QC, health, levels) in ``_tumbling_steps``. This module is the
kernel's public face: the two kernels, and the state's API re-exported with them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from engine.evaluation.kernels._common import NO_TS
from engine.evaluation.kernels._prefetch import PREFETCH_AHEAD, prefetch_item
from engine.evaluation.kernels._tumbling_state import (
    AGE_CAP,
    BLOCK_DTYPE,
    CLOSED_BIT,
    FLAT_CAP,
    LEVEL_MASK,
    NEVER,
    QC_ALERT_BIT,
    RAW_BITS,
    RUN_CAP,
    SILENT,
    SILENT_BIT,
    STATE_FIELDS,
    Params,
    earliest_open_end,
    make_params,
    new_state,
    outputs,
    set_thresholds,
    silent_due,
    transition_arrays,
)
from engine.evaluation.kernels._tumbling_steps import (
    advance_ages,
    as_i64,
    breached,
    close_open,
    due_level,
    emit,
    extend_runs,
    health_out,
    health_step,
    held,
    qc_step,
    start_runs,
    thresholds_of,
    window_start,
)
from engine.evaluation.kernels.health import QC

__all__ = [
    "AGE_CAP",
    "BLOCK_DTYPE",
    "FLAT_CAP",
    "QC",
    "QC_ALERT_BIT",
    "RUN_CAP",
    "SILENT",
    "SILENT_BIT",
    "STATE_FIELDS",
    "Params",
    "close_windows",
    "earliest_open_end",
    "make_params",
    "new_state",
    "outputs",
    "process",
    "set_thresholds",
    "silent_due",
    "transition_arrays",
]


@njit(cache=True)
def process(state, p, limits, sensor, ts, value, quality, out):  # type: ignore[no-untyped-def]
    """Apply a batch of readings; returns (level transitions, health changes, late rows)
    written to ``out`` (from :func:`outputs` for at least ``len(ts)`` readings).

    ``limits`` = (future_lim, past_lim, current_from), ms: QC fails readings after the
    first or before the second; a reading before the third does not end its sensor's
    silence (``engine.evaluation.kernels.health.current_from``). ``sensor`` (int32),
    ``ts`` (int64 ms), ``value`` (float64, the metric's unit) and ``quality`` (uint8,
    the incoming flag) are parallel arrays.
    Output values are window aggregates (or, for a late reading, its value) in the
    metric's unit.

    Lateness is the sensor's own (see the module docstring): a reading is late only
    when its window is older than the sensor's latest window, and beyond
    ``p.lateness_ms`` of the sensor's own time, or under a ``for`` rule.

    Only the rare paths (a transition, a health change) call helpers with arrays: numba
    reference-counts every array argument, which on the per-reading path cost 2x.
    """
    future_lim, past_lim, current_from = limits
    tr, hc, late = out
    n_tr = n_hc = n_late = 0
    w = p.window_ms
    sh = p.shift_ms
    m = ts.shape[0]
    for r in range(m):
        # Random state access at millions of sensors: ask for a later reading's lines now.
        if r + PREFETCH_AHEAD < m:
            prefetch_item(state, sensor[r + PREFETCH_AHEAD])
        i = sensor[r]
        t = ts[r]
        v = value[r]
        st = state[i]
        q = qc_step(st, p, future_lim, past_lim, t, v, quality[r])
        seen = st["seen_ts"]
        ev = health_step(st, p.fail_after, current_from, t, q)
        if ev:
            n_hc = health_out(hc, n_hc, st, i, ev, t, seen, v)
        if q >= p.drop_from:
            continue  # QC failures (and dropped suspects) never raise or clear a level
        last = st["last_ts"]
        x = v * p.direction
        if last != NO_TS and t < window_start(last, w, sh):
            # The sensor has moved on to a later window: this one is closed.
            if _may_escalate_late(st, p, t, last):
                n_tr = _late_escalation(tr, n_tr, st, i, t, x, p)
            else:
                late[0][n_late] = r
                n_late += 1
            continue
        if p.on_reading and t < st["down_ts"]:
            # Taken before the reading that stepped down, arriving after it: the step-down
            # decided its window; only a breach above the level it left still raises.
            if p.for_ms == 0:
                n_tr = _late_escalation(tr, n_tr, st, i, t, x, p)
            continue
        if t == last:
            continue  # a duplicate: a redelivered reading never counts twice
        # The window: the latest one holds the last reading taken; agg NaN = none yet
        # (or closed by a snapshot's older format, which did not keep the aggregate).
        agg = st["agg"]
        changed = True
        if np.isnan(agg) or t >= window_start(last, w, sh) + w:
            if not np.isnan(agg):
                thr = thresholds_of(st)
                if not as_i64(st["levels"]) & CLOSED_BIT:
                    frm, to = close_open(st, thr, p)
                    if to < frm:
                        end = window_start(last, w, sh) + w - p.right
                        n_tr = emit(tr, n_tr, st, i, frm, to, end, agg, thr, p.direction)
                # The window ended: its final aggregate breaks the runs it did not hold.
                end_raw = breached(agg, thr, p.direction)
                lv = as_i64(st["levels"])
                if end_raw < (lv >> 3) & LEVEL_MASK:
                    st["levels"] = (lv & ~RAW_BITS) | (end_raw << 3)
            agg = x
            st["levels"] = as_i64(st["levels"]) & ~CLOSED_BIT
        elif x > agg:
            agg = x
            # Closed by the watermark, yet the sensor's own data is not done with it
            # (a backlog continued in the next batch, a reading out of order): reopen.
            st["levels"] = as_i64(st["levels"]) & ~CLOSED_BIT
        else:
            changed = False
        st["agg"] = agg
        if t > last or changed:  # one out of order that moves nothing may be a redelivery
            st["accepted"] += 1
        if p.on_reading and t > last and as_i64(st["levels"]) & LEVEL_MASK:
            n_tr = _step_down(tr, n_tr, st, i, t, x, p)
            agg = st["agg"]
        # The levels: breach runs (the `for` clocks) and early escalation. ``raw`` is the
        # highest level whose run is alive: held by every window since it began, the
        # open one included or still undecided.
        lv = as_i64(st["levels"])
        current = lv & LEVEL_MASK
        raw = (lv >> 3) & LEVEL_MASK
        # A reading out of order within the window leaves the clocks at ``last``; its
        # breach runs began ``last - t`` ms before that.
        run_age = 0
        if t > last:
            if raw > 0:
                advance_ages(st, raw, t - last)
            st["last_ts"] = t
        else:
            run_age = last - t
            if (
                p.for_ms == 0
                and current > 0
                and t < st["episode_start"]
                and breached(x, thresholds_of(st), p.direction)
            ):
                st["episode_start"] = t  # the episode began at this reading, out of order
            if p.for_ms > 0 and raw > 0:
                # The runs this reading breaches began no later than it did.
                extend_runs(st, min(raw, breached(x, thresholds_of(st), p.direction)), run_age)
        now = -1  # the level the open window's running aggregate breaches, when needed
        if changed:
            now = breached(agg, thresholds_of(st), p.direction)
            if now > raw:
                start_runs(st, raw, now, run_age)
                raw = now
                st["levels"] = (lv & ~RAW_BITS) | (raw << 3)
        if raw <= current:
            continue  # the common case: nothing above the current level is breached
        thr = thresholds_of(st)
        if now < 0:
            now = breached(agg, thr, p.direction)
        if now <= current:
            continue  # a run goes on, but this window has not breached its line (yet)
        new = due_level(st, thr, now, current, p.for_ms)
        if new > current:
            # A ``for`` run is timed on the sensor's clock: one completed by a reading out
            # of order was complete at the sensor's latest reading, not before.
            at = t if p.for_ms == 0 else st["last_ts"]
            if current == 0:
                st["episode_start"] = at
            n_tr = emit(tr, n_tr, st, i, current, new, at, agg, thr, p.direction)
            st["levels"] = (as_i64(st["levels"]) & ~LEVEL_MASK) | new
    return n_tr, n_hc, n_late


@njit(cache=True)
def _step_down(tr, n, st, i, t, x, p):  # type: ignore[no-untyped-def]
    """``step_down: reading``: the sensor's newest reading ``x`` (sign-adjusted) leaves
    the levels it is back past by the deadband, at its own time. The window starts over
    at this reading (the earlier, higher readings are what the level just left, and must
    not raise it again) and the breach runs of the levels ``x`` is below end (a level
    left is entered again only after its ``for``, timed anew). Returns the transitions
    written so far."""
    thr = thresholds_of(st)
    lv = as_i64(st["levels"])
    current = lv & LEVEL_MASK
    new = held(x, thr, current, p)
    if new >= current:
        return n
    n = emit(tr, n, st, i, current, new, t, x, thr, p.direction)
    raw = min((lv >> 3) & LEVEL_MASK, breached(x, thr, p.direction))
    st["levels"] = (lv & ~(LEVEL_MASK | RAW_BITS)) | new | (raw << 3)
    st["agg"] = x
    st["down_ts"] = t
    st["down_from"] = current
    return n


@njit(cache=True)
def _may_escalate_late(st, p, t, last):  # type: ignore[no-untyped-def]
    """Whether a reading at ``t`` of a window the sensor has left may still raise its
    level: without ``for``, within the allowed lateness of the sensor's own time, and
    only from the window just before its latest, still open one. Then a redelivery of
    a reading already counted cannot raise anything again: its window held the level
    when it closed, and no window has closed since."""
    end = window_start(t, p.window_ms, p.shift_ms) + p.window_ms
    return (
        p.for_ms == 0
        and end == window_start(last, p.window_ms, p.shift_ms)
        and end + p.lateness_ms > last
        and not as_i64(st["levels"]) & CLOSED_BIT
    )


@njit(cache=True)
def _late_escalation(tr, n, st, i, t, x, p):  # type: ignore[no-untyped-def]
    """A reading of a window the sensor has left, within the allowed lateness, or (with
    ``step_down: reading``) one taken before the sensor's latest step-down: it can still
    raise the level (at its own time), never lower it, as the window it belongs to was
    decided without it. One before the step-down raises only past the level that the
    step-down left: up to there it was part of what the step-down decided, on a later
    reading. Returns the transitions written so far; counts the reading only when it
    raises the level (else it may be a redelivery)."""
    thr = thresholds_of(st)
    lv = as_i64(st["levels"])
    current = lv & LEVEL_MASK
    decided = current
    before_down = p.on_reading and t < st["down_ts"]
    if before_down:
        decided = max(current, as_i64(st["down_from"]))
    new = breached(x, thr, p.direction)
    if new > 0 and current > 0 and t < st["episode_start"]:  # (no ``for`` here)
        st["episode_start"] = t  # the episode began at this reading
    if new <= decided:
        return n
    st["accepted"] += 1
    if current == 0:
        # The episode the step-down ended, if the reading was taken within it.
        if before_down and st["episode_start"] != NO_TS:
            st["episode_start"] = min(st["episode_start"], t)
        else:
            st["episode_start"] = t
    n = emit(tr, n, st, i, current, new, t, x, thr, p.direction)
    st["levels"] = (lv & ~LEVEL_MASK) | new
    return n


@njit(cache=True)
def close_windows(state, p, closing, tr):  # type: ignore[no-untyped-def]
    """Close every open window that ends at or before ``closing`` (ms); ``tr`` from
    :func:`transition_arrays` for ``len(state)`` rows. Returns the number of transitions
    written and the end (ms) of the earliest window left open (int64 max if none), which
    saves the caller a second pass over every sensor."""
    w = p.window_ms
    sh = p.shift_ms
    cutoff = window_start(closing, w, sh)  # a window ends by `closing` iff last_ts < this
    first_open = NEVER
    n = 0
    for i in range(state.shape[0]):
        st = state[i]
        agg = st["agg"]
        if np.isnan(agg) or as_i64(st["levels"]) & CLOSED_BIT:
            continue
        last = st["last_ts"]
        if last >= cutoff:
            first_open = min(first_open, last)
            continue
        thr = thresholds_of(st)
        frm, to = close_open(st, thr, p)
        st["levels"] = as_i64(st["levels"]) | CLOSED_BIT
        if to < frm:
            end = window_start(last, w, sh) + w - p.right
            n = emit(tr, n, st, i, frm, to, end, agg, thr, p.direction)
    return n, NEVER if first_open == NEVER else window_start(first_open, w, sh) + w

"""The early-firing path of a tumbling-window rule, one pass per reading: quality
control, sensor health, the window's running maximum and the four levels.

Rules on ``max`` above (or ``min`` below: direction -1 flips the sign) a threshold use
this kernel. Per reading, in the order of the arrays (event-time order per sensor):

1. **QC**, exactly as :func:`engine.kernels.qc.qc_batch` with rule-wide limits
   (``Params``; the engine's rules have no per-sensor QC limits).
2. **Sensor health**, exactly as :func:`engine.kernels.health.observe`: a run of
   ``fail_after`` QC failures raises a QC alert, the next reading that does not fail
   clears it; a reading clears a silence alert. Silence itself is found by
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
   :func:`engine.kernels.tumbling_levels_reference.reference_process`:

   * escalation fires early, on the reading that pushes the running window aggregate
     over a higher threshold (the running maximum only grows within a window, so an
     early escalation is never taken back by later readings of the same window);
   * with a ``for`` duration, a level is entered only once the running aggregate has
     breached it without a break for at least ``for_ms`` (a new window whose first
     reading is below the line breaks the run);
   * de-escalation is decided when a window closes, from its aggregate: a level is kept
     while the aggregate stays above ``threshold - deadband``;
   * a window closes when a reading of a later window arrives for the sensor, or when
     the watermark passes its end (:func:`close_windows`), so a gauge that falls silent
     mid-flood does not hold its last window open forever. A close by the watermark
     keeps the window's aggregate (``CLOSED_BIT``): a later reading of the sensor for
     that window (a backlog that goes on in the next batch) reopens it, and the window
     is decided again when it next closes.

Memory: one 128-byte block per sensor (``BLOCK_DTYPE``), allocated on a 128-byte
boundary, two cache lines that sit side by side in memory. The first line holds
everything a reading changes in the common case; the second holds the sensor's four
thresholds (the rule's, in the metric's unit, NaN for unused levels; written by
:func:`set_thresholds`), which a reading reads when its window's aggregate moves, and
the two times written only when an episode or a QC failure run begins. Two adjacent
lines of one block cost much less than two lines in separate arrays: measured at 10 M
sensors, 27 against 19 M readings/s for the kernel alone. The mutable state, which
snapshots carry (``STATE_FIELDS``), is 80 bytes per sensor; the thresholds take 32 and
16 are padding. All times are event time, ms since the epoch (UTC).

Compact fields and their documented limits (checked by ``ThresholdRule`` and
:func:`make_params`):

* the window start is not stored: it is ``last_ts`` rounded down to the window, since
  the open window always holds the sensor's last taken reading; ``agg`` is NaN when no
  window is open;
* the ``for`` clocks are stored as ages (ms since the breach run began, as of
  ``last_ts``) in uint32, saturating at ``AGE_CAP`` (49.7 days): exact for every
  ``for_ms`` up to ``AGE_CAP``;
* the flat-line run saturates at ``FLAT_CAP`` readings (``flat_fail_n`` and
  ``flat_suspect_n`` at most that), the QC-failure run at ``RUN_CAP`` (``fail_after``
  at most that);
* level and highest breached level share a byte; the health flags and the failure run
  another.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from numba import njit

from engine.kernels._common import MS_PER_HOUR, NO_TS, Q_FAIL, Q_GOOD, Q_MISSING, Q_SUSPECT
from engine.kernels._prefetch import PREFETCH_AHEAD, prefetch_item
from engine.kernels.health import QC, SILENT, change_arrays

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

AGE_CAP = np.iinfo(np.uint32).max
FLAT_CAP = np.iinfo(np.uint16).max
RUN_CAP = 31  # 5 bits of ``health``
QC_ALERT_BIT = 32
SILENT_BIT = 64
LEVEL_MASK = 7  # ``levels`` bits 0-2: the current level; bits 3-5: the highest breached
RAW_BITS = LEVEL_MASK << 3
#: ``levels`` bit 6: the watermark closed the sensor's latest window (its aggregate is
#: kept, so that a later reading of the sensor for that window can reopen it).
CLOSED_BIT = 64

BLOCK_DTYPE = np.dtype(
    [
        # -- line 0: what a reading changes --
        ("agg", "<f8"),  # running aggregate of the open window (sign-adjusted); NaN: none
        ("last_ts", "<i8"),  # the last reading taken into a window
        ("qc_value", "<f8"),  # QC's previous reference reading: value ...
        ("qc_ts", "<i8"),  # ... and time, NO_TS when there is none
        ("seen_ts", "<i8"),  # the newest reading of any quality (silence)
        # Ages of the breach runs of levels 1..4 (ms, as of last_ts): the `for` clocks.
        # Meaningful for the levels up to `raw` only.
        ("age1", "<u4"),
        ("age2", "<u4"),
        ("age3", "<u4"),
        ("age4", "<u4"),
        ("accepted", "<u4"),  # readings taken: in order, or out of order moving the window
        ("flat_run", "<u2"),  # readings in the current flat run, saturating at FLAT_CAP
        ("health", "u1"),  # bits 0-4: QC failure run (saturating); QC_ALERT_BIT; SILENT_BIT
        ("levels", "u1"),  # bits 0-2: level 0..4; 3-5: raw, the highest breached; CLOSED_BIT
        # -- line 1: the rule's thresholds, and times written rarely --
        ("thr1", "<f8"),  # blue .. red, the metric's unit (not sign-adjusted), NaN: unused
        ("thr2", "<f8"),
        ("thr3", "<f8"),
        ("thr4", "<f8"),
        ("episode_start", "<i8"),  # when the level last left 0
        ("fail_since", "<i8"),  # the first reading of the current QC failure run
        ("_pad", "u1", (16,)),
    ]
)
THRESHOLD_FIELDS = ("thr1", "thr2", "thr3", "thr4")
#: The fields a snapshot carries: all but the thresholds (from the rule) and padding.
STATE_FIELDS = tuple(f for f in BLOCK_DTYPE.names or () if f not in (*THRESHOLD_FIELDS, "_pad"))
BLOCK = 128
NEVER = int(np.iinfo(np.int64).max)


class Params(NamedTuple):
    """A rule's constants, in the metric's unit and ms. QC limits NaN = test off."""

    direction: int  # +1 above, -1 below
    deadband: float
    window_ms: int
    for_ms: int  # at most AGE_CAP
    fail_after: int  # QC failures in a row before a QC alert, 1..RUN_CAP
    fail_lo: float
    fail_hi: float
    suspect_lo: float
    suspect_hi: float
    spike: float
    rate_per_h: float
    flat_eps: float
    flat_suspect_n: int  # 0 = off, at most FLAT_CAP
    flat_fail_n: int  # 0 = off, at most FLAT_CAP
    lateness_ms: int  # how far behind the sensor's own time a reading can still escalate
    #: The least severe flag whose readings move no window: Q_FAIL, or Q_SUSPECT when the
    #: rule drops suspect readings (flags order by severity: GOOD < SUSPECT < FAIL < MISSING).
    drop_from: int = Q_FAIL


def make_params(
    direction: int,
    deadband: float,
    window_ms: int,
    for_ms: int,
    fail_after: int,
    qc: tuple[float, float, float, float, float, float, float, int, int],
    lateness_ms: int = 0,
    drop_suspect: bool = False,
) -> Params:
    """``qc``: fail_lo, fail_hi, suspect_lo, suspect_hi, spike, rate_per_h, flat_eps,
    flat_suspect_n, flat_fail_n; ``drop_suspect``: SUSPECT readings move no window either.
    Raises ValueError past the compact fields' limits."""
    drop_from = Q_SUSPECT if drop_suspect else Q_FAIL
    p = Params(
        direction, float(deadband), window_ms, for_ms, fail_after, *qc, lateness_ms, drop_from
    )
    if not 0 <= for_ms <= AGE_CAP:
        raise ValueError(f"for_ms {for_ms} outside 0..{AGE_CAP} (49.7 days)")
    if not 1 <= fail_after <= RUN_CAP:
        raise ValueError(f"fail_after {fail_after} outside 1..{RUN_CAP}")
    if not (0 <= p.flat_suspect_n <= FLAT_CAP and 0 <= p.flat_fail_n <= FLAT_CAP):
        raise ValueError(f"flat-line counts {p.flat_suspect_n}, {p.flat_fail_n} past {FLAT_CAP}")
    return p


def new_state(n: int) -> npt.NDArray[np.void]:
    """State for ``n`` sensors: no window open, level 0, nothing seen, no thresholds."""
    raw = np.zeros(n * BLOCK + BLOCK, np.uint8)
    skip = -raw.ctypes.data % BLOCK  # a block is two adjacent lines, never three
    state = raw[skip : skip + n * BLOCK].view(BLOCK_DTYPE)
    for name in ("agg", "qc_value", *THRESHOLD_FIELDS):
        state[name] = np.nan
    for name in ("last_ts", "qc_ts", "seen_ts", "episode_start", "fail_since"):
        state[name] = NO_TS
    return state


def set_thresholds(state: npt.NDArray[np.void], thresholds: npt.NDArray[np.float64]) -> None:
    """Write the (n_sensors, 4) thresholds (metric's unit, NaN = unused) into the blocks."""
    for k, name in enumerate(THRESHOLD_FIELDS):
        state[name] = thresholds[:, k]


def transition_arrays(n: int) -> tuple[npt.NDArray[np.generic], ...]:
    """``n`` rows of level transitions: sensor, from, to, ms, value, threshold, and the
    start (ms) of the episode the transition belongs to."""
    return (
        np.empty(n, np.int32),
        np.empty(n, np.int8),
        np.empty(n, np.int8),
        np.empty(n, np.int64),
        np.empty(n, np.float64),
        np.empty(n, np.float64),
        np.empty(n, np.int64),
    )


def outputs(n: int) -> tuple[tuple[npt.NDArray[np.generic], ...], ...]:
    """Output arrays for ``process`` on ``n`` readings: level transitions, health
    changes (sensor, kind, firing, ms, since ms, value) and the rows of late readings.
    A reading can close a window and escalate, or clear a silence and a QC alert."""
    return (
        transition_arrays(2 * n),
        change_arrays(2 * n),
        (np.empty(n, np.int64),),
    )


# ---- per-reading steps -------------------------------------------------------------------


@njit(cache=True)
def _int(x):  # type: ignore[no-untyped-def]
    """``x`` as int64: numba would type a uint8 field's bits as uint64, and uint64 with
    int64 unifies to float64."""
    return np.int64(x)


@njit(cache=True)
def _qc(st, p, future_lim, past_lim, t, v, qi):  # type: ignore[no-untyped-def]
    """The reading's QC flag; advances the QC fields (see ``engine.kernels.qc``)."""
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


# Health events of one reading, bits of ``_health``'s result.
EV_SILENCE_OVER, EV_RUN_BEGINS, EV_QC_FIRES, EV_QC_CLEARS = 1, 2, 4, 8


@njit(cache=True)
def _health(st, fail_after, t, q):  # type: ignore[no-untyped-def]
    """Track QC failure runs and silence (see ``engine.kernels.health``); returns the
    reading's health events (``EV_*`` bits, 0 in the common case)."""
    h = _int(st["health"])
    ev = 0
    if h & SILENT_BIT:
        h &= ~SILENT_BIT
        ev |= EV_SILENCE_OVER
    if t > st["seen_ts"]:
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
def _health_out(hc, n, st, i, ev, t, seen, v):  # type: ignore[no-untyped-def]
    """Write the health changes of events ``ev`` (``seen``: the sensor's newest reading
    before this one)."""
    if ev & EV_SILENCE_OVER:
        n = _change(hc, n, i, SILENT, 0, t, seen, v)
    if ev & EV_RUN_BEGINS:
        st["fail_since"] = t
    if ev & EV_QC_FIRES:
        n = _change(hc, n, i, QC, 1, t, st["fail_since"], v)
    if ev & EV_QC_CLEARS:
        n = _change(hc, n, i, QC, 0, t, st["fail_since"], v)
    return n


@njit(cache=True)
def _change(hc, n, i, kind, firing, t, since, v):  # type: ignore[no-untyped-def]
    hc[0][n] = i
    hc[1][n] = kind
    hc[2][n] = firing
    hc[3][n] = t
    hc[4][n] = since
    hc[5][n] = v
    return n + 1


@njit(cache=True)
def _row(st):  # type: ignore[no-untyped-def]
    """The sensor's four thresholds as a tuple (no array: numba would count references)."""
    return (st["thr1"], st["thr2"], st["thr3"], st["thr4"])


@njit(cache=True)
def _breached(agg, thr, direction):  # type: ignore[no-untyped-def]
    """Highest level whose threshold the aggregate reaches (no deadband), 0 if none."""
    for k in range(4, 0, -1):
        t = thr[k - 1]
        if not np.isnan(t) and agg >= t * direction:
            return k
    return 0


@njit(cache=True)
def _held(agg, thr, current, p):  # type: ignore[no-untyped-def]
    """Highest level at or below ``current`` still held within the deadband, 0 if none."""
    for k in range(current, 0, -1):
        t = thr[k - 1]
        if not np.isnan(t) and agg >= t * p.direction - p.deadband:
            return k
    return 0


@njit(cache=True)
def _emit(tr, n, st, i, frm, to, t, agg, thr, direction):  # type: ignore[no-untyped-def]
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
def _close(st, thr, p):  # type: ignore[no-untyped-def]
    """Close the sensor's open window: drop to the highest level still held. Returns
    the level before and after. The aggregate stays: a watermark's close may reopen."""
    current = _int(st["levels"]) & LEVEL_MASK
    new = _held(st["agg"], thr, current, p)
    if new < current:
        st["levels"] = (_int(st["levels"]) & ~LEVEL_MASK) | new
    return current, new


@njit(cache=True)
def _age(st, k):  # type: ignore[no-untyped-def]
    if k == 1:
        return st["age1"]
    if k == 2:
        return st["age2"]
    if k == 3:
        return st["age3"]
    return st["age4"]


@njit(cache=True)
def _advance_ages(st, raw, d):  # type: ignore[no-untyped-def]
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
def _start_runs(st, raw, new_raw, age):  # type: ignore[no-untyped-def]
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
def _due(st, thr, raw, current, for_ms):  # type: ignore[no-untyped-def]
    """The highest level above ``current`` whose breach run has lasted ``for_ms``."""
    for k in range(raw, current, -1):
        if not np.isnan(thr[k - 1]) and _age(st, k) >= for_ms:
            return k
    return current


# ---- kernels ---------------------------------------------------------------------------


@njit(cache=True)
def process(state, p, limits, sensor, ts, value, quality, out):  # type: ignore[no-untyped-def]
    """Apply a batch of readings; returns (level transitions, health changes, late rows)
    written to ``out`` (from :func:`outputs` for at least ``len(ts)`` readings).

    ``limits`` = (future_lim, past_lim), ms: QC fails readings after the first or
    before the second. ``sensor`` (int32), ``ts`` (int64 ms), ``value`` (float64, the
    metric's unit) and ``quality`` (uint8, the incoming flag) are parallel arrays.
    Output values are window aggregates (or, for a late reading, its value) in the
    metric's unit.

    Lateness is the sensor's own (see the module docstring): a reading is late only
    when its window is older than the sensor's latest window, and beyond
    ``p.lateness_ms`` of the sensor's own time, or under a ``for`` rule.

    Only the rare paths (a transition, a health change) call helpers with arrays: numba
    reference-counts every array argument, which on the per-reading path cost 2x.
    """
    future_lim, past_lim = limits
    tr, hc, late = out
    n_tr = n_hc = n_late = 0
    w = p.window_ms
    m = ts.shape[0]
    for r in range(m):
        # Random state access at millions of sensors: ask for a later reading's lines now.
        if r + PREFETCH_AHEAD < m:
            prefetch_item(state, sensor[r + PREFETCH_AHEAD])
        i = sensor[r]
        t = ts[r]
        v = value[r]
        st = state[i]
        q = _qc(st, p, future_lim, past_lim, t, v, quality[r])
        seen = st["seen_ts"]
        ev = _health(st, p.fail_after, t, q)
        if ev:
            n_hc = _health_out(hc, n_hc, st, i, ev, t, seen, v)
        if q >= p.drop_from:
            continue  # QC failures (and dropped suspects) never raise or clear a level
        last = st["last_ts"]
        x = v * p.direction
        if last != NO_TS and t < last - last % w:
            # The sensor has moved on to a later window: this one is closed.
            if _may_escalate_late(st, p, t, last):
                n_tr = _late_escalation(tr, n_tr, st, i, t, x, p)
            else:
                late[0][n_late] = r
                n_late += 1
            continue
        if t == last:
            continue  # a duplicate: a redelivered reading never counts twice
        # The window: the latest one holds the last reading taken; agg NaN = none yet
        # (or closed by a snapshot's older format, which did not keep the aggregate).
        agg = st["agg"]
        changed = True
        if np.isnan(agg) or t >= last - last % w + w:
            if not np.isnan(agg) and not _int(st["levels"]) & CLOSED_BIT:
                thr = _row(st)
                frm, to = _close(st, thr, p)
                if to < frm:
                    n_tr = _emit(tr, n_tr, st, i, frm, to, last - last % w + w, agg, thr,
                                 p.direction)  # fmt: skip
            agg = x
            st["levels"] = _int(st["levels"]) & ~CLOSED_BIT
        elif x > agg:
            agg = x
            # Closed by the watermark, yet the sensor's own data is not done with it
            # (a backlog continued in the next batch, a reading out of order): reopen.
            st["levels"] = _int(st["levels"]) & ~CLOSED_BIT
        else:
            changed = False
        st["agg"] = agg
        if t > last or changed:  # one out of order that moves nothing may be a redelivery
            st["accepted"] += 1
        # The levels: breach runs (the `for` clocks) and early escalation.
        lv = _int(st["levels"])
        current = lv & LEVEL_MASK
        raw = (lv >> 3) & LEVEL_MASK
        # A reading out of order within the window leaves the clocks at ``last``; its
        # breach runs began ``last - t`` ms before that.
        run_age = 0
        if t > last:
            if raw > 0:
                _advance_ages(st, raw, t - last)
            st["last_ts"] = t
        else:
            run_age = last - t
            if (
                p.for_ms == 0
                and current > 0
                and t < st["episode_start"]
                and _breached(x, _row(st), p.direction)
            ):
                st["episode_start"] = t  # the episode began at this reading, out of order
        if changed:
            new_raw = _breached(agg, _row(st), p.direction)
            if new_raw > raw:
                _start_runs(st, raw, new_raw, run_age)
            raw = new_raw
            st["levels"] = (lv & ~RAW_BITS) | (raw << 3)
        if raw <= current:
            continue  # the common case: nothing above the current level is breached
        thr = _row(st)
        new = _due(st, thr, raw, current, p.for_ms)
        if new > current:
            if current == 0:
                st["episode_start"] = t
            n_tr = _emit(tr, n_tr, st, i, current, new, t, agg, thr, p.direction)
            st["levels"] = (_int(st["levels"]) & ~LEVEL_MASK) | new
    return n_tr, n_hc, n_late


@njit(cache=True)
def _may_escalate_late(st, p, t, last):  # type: ignore[no-untyped-def]
    """Whether a reading at ``t`` of a window the sensor has left may still raise its
    level: without ``for``, within the allowed lateness of the sensor's own time, and
    only from the window just before its latest, still open one. Then a redelivery of
    a reading already counted cannot raise anything again: its window held the level
    when it closed, and no window has closed since."""
    end = t - t % p.window_ms + p.window_ms
    return (
        p.for_ms == 0
        and end == last - last % p.window_ms
        and end + p.lateness_ms > last
        and not _int(st["levels"]) & CLOSED_BIT
    )


@njit(cache=True)
def _late_escalation(tr, n, st, i, t, x, p):  # type: ignore[no-untyped-def]
    """A reading of a window the sensor has left, within the allowed lateness: it can
    still raise the level (at its own time), never lower it, as the window it belongs
    to was decided without it. Returns the transitions written so far; counts the
    reading only when it raises the level (else it may be a redelivery)."""
    thr = _row(st)
    lv = _int(st["levels"])
    current = lv & LEVEL_MASK
    new = _breached(x, thr, p.direction)
    if new > 0 and current > 0 and t < st["episode_start"]:  # (no ``for`` here)
        st["episode_start"] = t  # the episode began at this reading
    if new <= current:
        return n
    st["accepted"] += 1
    if current == 0:
        st["episode_start"] = t
    n = _emit(tr, n, st, i, current, new, t, x, thr, p.direction)
    st["levels"] = (lv & ~LEVEL_MASK) | new
    return n


@njit(cache=True)
def close_windows(state, p, closing, tr):  # type: ignore[no-untyped-def]
    """Close every open window that ends at or before ``closing`` (ms); ``tr`` from
    :func:`transition_arrays` for ``len(state)`` rows. Returns the number of transitions
    written and the end (ms) of the earliest window left open (int64 max if none), which
    saves the caller a second pass over every sensor."""
    w = p.window_ms
    cutoff = closing - closing % w  # a window ends by `closing` iff last_ts < this
    first_open = NEVER
    n = 0
    for i in range(state.shape[0]):
        st = state[i]
        agg = st["agg"]
        if np.isnan(agg) or _int(st["levels"]) & CLOSED_BIT:
            continue
        last = st["last_ts"]
        if last >= cutoff:
            first_open = min(first_open, last)
            continue
        thr = _row(st)
        frm, to = _close(st, thr, p)
        st["levels"] = _int(st["levels"]) | CLOSED_BIT
        if to < frm:
            n = _emit(tr, n, st, i, frm, to, last - last % w + w, agg, thr, p.direction)
    return n, NEVER if first_open == NEVER else first_open - first_open % w + w


def earliest_open_end(state: npt.NDArray[np.void], window_ms: int) -> int:
    """The end (ms) of the earliest window still open, int64 max when none is."""
    is_open = ~np.isnan(state["agg"]) & (state["levels"] & CLOSED_BIT == 0)
    last = state["last_ts"][is_open]
    if not len(last):
        return NEVER
    first = int(last.min())
    return first - first % window_ms + window_ms


def silent_due(state: npt.NDArray[np.void], stale_ms: int, watermark: int) -> npt.NDArray[np.intp]:
    """Sensors with no reading in the ``stale_ms`` before ``watermark``, not yet reported
    silent; marks them silent. Their alerts date from ``seen_ts + stale_ms``."""
    seen = state["seen_ts"]
    quiet = (state["health"] & SILENT_BIT) == 0
    due = np.flatnonzero(quiet & (seen != NO_TS) & (seen <= watermark - stale_ms))
    state["health"][due] |= SILENT_BIT
    return due

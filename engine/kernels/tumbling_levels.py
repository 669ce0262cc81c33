"""Tumbling-window maximum against four per-sensor thresholds, with a reset deadband.

The first kernel of the live topology (the flood-gauge rule): per sensor, the maximum
(or, for ``below`` rules, the minimum: direction -1 flips the sign) of the readings in
the current tumbling window is compared with the sensor's blue/yellow/orange/red
thresholds.

* Escalation fires early, on the reading that pushes the running window aggregate over
  a higher threshold: a river rising through its warning level is reported at once, not
  when the window ends. (The running maximum only grows within a window, so an early
  escalation is never taken back by later readings of the same window.)
* De-escalation is decided when a window closes, from that window's aggregate: a level
  is kept while the aggregate stays above ``threshold - deadband``.
* A window closes when a reading of a later window arrives for the sensor, or when the
  partition's watermark passes its end (``close_windows``), so a gauge that falls
  silent mid-flood does not hold its last window open forever.
* Readings are taken in event-time order per sensor: one whose timestamp is not after
  the sensor's last accepted reading is a duplicate or late and is skipped (counted in
  ``dropped``). This is what makes at-least-once delivery safe: a redelivered reading
  never counts twice. NaN values are skipped too.

* With a ``for`` duration, a level is entered only once the running aggregate has
  breached it without a break for at least ``for_ms`` (checked on each reading; a new
  window whose first reading is below the line breaks the run). De-escalation has no
  ``for``: the deadband does that job.

State is one 80-byte record per sensor (``STATE_DTYPE``), indexed by a dense sensor
index; thresholds are an (n_sensors, 4) float64 array with NaN for unused levels.
Transitions are written to caller-provided output arrays; only transitions are output.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from engine.kernels._prefetch import PREFETCH_AHEAD, prefetch, prefetch2

__all__ = [
    "STATE_DTYPE",
    "close_windows",
    "earliest_open_end",
    "new_state",
    "process",
    "reference_process",
]

NO_WINDOW = np.iinfo(np.int64).min

STATE_DTYPE = np.dtype(
    [
        ("win_start", "<i8"),  # start of the open window (ms), NO_WINDOW if none
        ("last_ts", "<i8"),  # last accepted reading's event time (ms)
        ("episode_start", "<i8"),  # when the level left NONE (ms)
        ("agg", "<f8"),  # running aggregate of the open window (sign-adjusted)
        ("count", "<u4"),  # readings in the open window
        ("accepted", "<u4"),  # readings accepted in total (duplicates excluded)
        ("dropped", "<u4"),  # late, duplicate or NaN readings skipped
        ("level", "<i2"),  # current level 0..4
        ("raw", "<i2"),  # highest level the running aggregate reaches (no deadband)
        # Since when the running aggregate has breached each level without a break (ms),
        # NO_WINDOW when it does not: the clock of the rule's `for` duration.
        ("since1", "<i8"),
        ("since2", "<i8"),
        ("since3", "<i8"),
        ("since4", "<i8"),
    ]
)


def new_state(n: int) -> npt.NDArray[np.void]:
    """State for ``n`` sensors: no window open, level NONE."""
    state = np.zeros(n, dtype=STATE_DTYPE)
    state["win_start"] = NO_WINDOW
    for name in ("last_ts", "since1", "since2", "since3", "since4"):
        state[name] = NO_WINDOW
    return state


@njit(cache=True)
def _held_level(agg, thr, direction, current, deadband):  # type: ignore[no-untyped-def]
    """Highest level at or below ``current`` still held within the deadband, 0 if none."""
    for k in range(current, 0, -1):
        t = thr[k - 1]
        if not np.isnan(t) and agg >= t * direction - deadband:
            return k
    return 0


@njit(cache=True)
def _breached(agg, thr, direction):  # type: ignore[no-untyped-def]
    """Highest level whose threshold the aggregate reaches (no deadband), 0 if none."""
    for k in range(4, 0, -1):
        t = thr[k - 1]
        if not np.isnan(t) and agg >= t * direction:
            return k
    return 0


@njit(cache=True)
def _get_since(st, k):  # type: ignore[no-untyped-def]
    if k == 1:
        return st["since1"]
    if k == 2:
        return st["since2"]
    if k == 3:
        return st["since3"]
    return st["since4"]


@njit(cache=True)
def _set_since(st, k, value):  # type: ignore[no-untyped-def]
    if k == 1:
        st["since1"] = value
    elif k == 2:
        st["since2"] = value
    elif k == 3:
        st["since3"] = value
    else:
        st["since4"] = value


@njit(cache=True)
def _due_level(st, thr, t, for_ms):  # type: ignore[no-untyped-def]
    """Track the breach runs at time ``t``; the highest level whose run lasted ``for_ms``."""
    for k in range(4, st["level"], -1):
        since = _get_since(st, k)
        if since != NO_WINDOW and not np.isnan(thr[k - 1]) and t - since >= for_ms:
            return k
    return st["level"]


@njit(cache=True)
def _emit(  # type: ignore[no-untyped-def]
    out_sensor,
    out_from,
    out_to,
    out_ts,
    out_value,
    out_thr,
    n_out,
    sensor,
    frm,
    to,
    ts,
    value,
    thr_row,
    direction,
):
    out_sensor[n_out] = sensor
    out_from[n_out] = frm
    out_to[n_out] = to
    out_ts[n_out] = ts
    out_value[n_out] = value * direction
    # Report the threshold of the level entered, or of the level left when clearing.
    out_thr[n_out] = thr_row[(to if to > 0 else frm) - 1]
    return n_out + 1


@njit(cache=True)
def _close(  # type: ignore[no-untyped-def]
    state,
    i,
    thresholds,
    direction,
    deadband,
    window_ms,
    out_sensor,
    out_from,
    out_to,
    out_ts,
    out_value,
    out_thr,
    n_out,
):
    st = state[i]
    if st["win_start"] == NO_WINDOW or st["count"] == 0:
        return n_out
    current = st["level"]
    new = _held_level(st["agg"], thresholds[i], direction, current, deadband)
    if new < current:
        n_out = _emit(
            out_sensor,
            out_from,
            out_to,
            out_ts,
            out_value,
            out_thr,
            n_out,
            i,
            current,
            new,
            st["win_start"] + window_ms,
            st["agg"],
            thresholds[i],
            direction,
        )
        st["level"] = new
    st["win_start"] = NO_WINDOW
    st["count"] = 0
    return n_out


@njit(cache=True)
def process(  # type: ignore[no-untyped-def]
    state,
    thresholds,
    direction,
    deadband,
    window_ms,
    for_ms,
    sensor,
    ts,
    value,
    out_sensor,
    out_from,
    out_to,
    out_ts,
    out_value,
    out_thr,
):
    """Apply readings in order; returns the number of transitions written to ``out_*``.

    ``sensor`` (int32), ``ts`` (int64 ms) and ``value`` (float64) are parallel arrays.
    ``out_*`` must hold at least ``2 * len(ts)`` rows (a reading can close a window and
    escalate). Output ``value`` is the window aggregate in the metric's unit.
    """
    n_out = 0
    n = ts.shape[0]
    for r in range(n):
        # Random state access at millions of sensors: ask for a later reading's lines now.
        if r + PREFETCH_AHEAD < n:
            j = sensor[r + PREFETCH_AHEAD]
            prefetch(state, j)
            prefetch2(thresholds, j, 0)
        i = sensor[r]
        v = value[r]
        t = ts[r]
        st = state[i]
        if np.isnan(v) or t <= st["last_ts"]:
            st["dropped"] += 1
            continue
        start = t - (t % window_ms)
        if st["win_start"] != start:
            n_out = _close(
                state,
                i,
                thresholds,
                direction,
                deadband,
                window_ms,
                out_sensor,
                out_from,
                out_to,
                out_ts,
                out_value,
                out_thr,
                n_out,
            )
            st["win_start"] = start
            st["agg"] = v * direction
            st["count"] = 0
            changed = True
        elif v * direction > st["agg"]:
            st["agg"] = v * direction
            changed = True
        else:
            changed = False
        st["count"] += 1
        st["accepted"] += 1
        st["last_ts"] = t
        current = st["level"]
        raw = st["raw"]
        if changed:
            # Only the levels between the old and the new breach start or end a run.
            new_raw = _breached(st["agg"], thresholds[i], direction)
            for k in range(min(raw, new_raw) + 1, max(raw, new_raw) + 1):
                _set_since(st, k, t if k <= new_raw else NO_WINDOW)
            st["raw"] = new_raw
            raw = new_raw
        if raw <= current:
            continue  # the common case: nothing above the current level is breached
        new = _due_level(st, thresholds[i], t, for_ms)
        if new > current:
            if current == 0:
                st["episode_start"] = t
            n_out = _emit(
                out_sensor,
                out_from,
                out_to,
                out_ts,
                out_value,
                out_thr,
                n_out,
                i,
                current,
                new,
                t,
                st["agg"],
                thresholds[i],
                direction,
            )
            st["level"] = new
    return n_out


@njit(cache=True)
def close_windows(  # type: ignore[no-untyped-def]
    state,
    thresholds,
    direction,
    deadband,
    window_ms,
    watermark,
    out_sensor,
    out_from,
    out_to,
    out_ts,
    out_value,
    out_thr,
):
    """Close every open window that ends at or before ``watermark`` (ms).

    ``out_*`` must hold at least ``len(state)`` rows. Returns the number written.
    """
    n_out = 0
    for i in range(state.shape[0]):
        ws = state[i]["win_start"]
        if ws != NO_WINDOW and ws + window_ms <= watermark:
            n_out = _close(
                state,
                i,
                thresholds,
                direction,
                deadband,
                window_ms,
                out_sensor,
                out_from,
                out_to,
                out_ts,
                out_value,
                out_thr,
                n_out,
            )
    return n_out


def earliest_open_end(state: npt.NDArray[np.void], window_ms: int) -> int:
    """The end (ms) of the earliest window still open, int64 max when none is."""
    starts = state["win_start"]
    open_ = starts[starts != NO_WINDOW]
    return int(open_.min()) + window_ms if len(open_) else int(np.iinfo(np.int64).max)


def reference_process(
    levels: list[int],
    thresholds: npt.NDArray[np.float64],
    direction: int,
    deadband: float,
    window_ms: int,
    readings: list[tuple[int, int, float]],
    for_ms: int = 0,
) -> list[tuple[int, int, int, int, float]]:
    """Plain-Python statement of ``process`` for differential tests.

    ``levels`` is the per-sensor starting level (mutated); ``readings`` are
    (sensor, ts, value). Returns transitions (sensor, from, to, ts, aggregate); the
    state starts empty (no open windows) and is not carried between calls.
    """
    win: dict[int, tuple[int, float]] = {}  # sensor -> (window start, aggregate)
    last: dict[int, int] = {}
    since: dict[tuple[int, int], int] = {}  # (sensor, level) -> start of the breach run
    out: list[tuple[int, int, int, int, float]] = []

    def used(i: int, k: int) -> bool:
        return not np.isnan(thresholds[i, k - 1])

    def line(i: int, k: int) -> float:
        return float(thresholds[i, k - 1]) * direction

    for i, t, v in readings:
        if np.isnan(v) or t <= last.get(i, NO_WINDOW):
            continue
        start = t - t % window_ms
        if i in win and win[i][0] != start:
            wstart, wagg = win.pop(i)
            held = next(
                (
                    k
                    for k in range(levels[i], 0, -1)
                    if used(i, k) and wagg >= line(i, k) - deadband
                ),
                0,
            )
            if held < levels[i]:
                out.append((i, levels[i], held, wstart + window_ms, wagg * direction))
                levels[i] = held
        agg = max(win[i][1], v * direction) if i in win else v * direction
        win[i] = (start, agg)
        last[i] = t
        raw = next((k for k in (4, 3, 2, 1) if used(i, k) and agg >= line(i, k)), 0)
        for k in (1, 2, 3, 4):
            if k > raw:
                since.pop((i, k), None)
            else:
                since.setdefault((i, k), t)
        due = next(
            (
                k
                for k in range(4, levels[i], -1)
                if (i, k) in since and used(i, k) and t - since[(i, k)] >= for_ms
            ),
            levels[i],
        )
        if due > levels[i]:
            out.append((i, levels[i], due, t, agg * direction))
            levels[i] = due
    return out

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

State is one 48-byte record per sensor (``STATE_DTYPE``), indexed by a dense sensor
index; thresholds are an (n_sensors, 4) float64 array with NaN for unused levels.
Transitions are written to caller-provided output arrays; only transitions are output.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = [
    "STATE_DTYPE",
    "close_windows",
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
        ("level", "<i4"),  # current level 0..4
    ]
)


def new_state(n: int) -> npt.NDArray[np.void]:
    """State for ``n`` sensors: no window open, level NONE."""
    state = np.zeros(n, dtype=STATE_DTYPE)
    state["win_start"] = NO_WINDOW
    state["last_ts"] = NO_WINDOW
    return state


@njit(cache=True)
def _level_for(
    agg: float,
    thr: npt.NDArray[np.float64],
    direction: int,
    current: int,
    deadband: float,
    escalate_only: bool,
) -> int:
    """Highest level whose condition holds; levels at or below ``current`` keep the deadband."""
    best = 0
    for k in range(4, 0, -1):
        t = thr[k - 1]
        if np.isnan(t):
            continue
        t = t * direction
        if k > current:
            if agg >= t:
                best = k
                break
        elif escalate_only:
            best = current
            break
        elif agg >= t - deadband:
            best = k
            break
    return best


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
    if st.win_start == NO_WINDOW or st.count == 0:
        return n_out
    current = st.level
    new = _level_for(st.agg, thresholds[i], direction, current, deadband, False)
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
            st.win_start + window_ms,
            st.agg,
            thresholds[i],
            direction,
        )
        st.level = new
    st.win_start = NO_WINDOW
    st.count = 0
    return n_out


@njit(cache=True)
def process(  # type: ignore[no-untyped-def]
    state,
    thresholds,
    direction,
    deadband,
    window_ms,
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
    for r in range(ts.shape[0]):
        i = sensor[r]
        v = value[r]
        t = ts[r]
        st = state[i]
        if np.isnan(v) or t <= st.last_ts:
            st.dropped += 1
            continue
        start = t - (t % window_ms)
        if st.win_start != start:
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
            st.win_start = start
            st.agg = v * direction
            st.count = 0
        elif v * direction > st.agg:
            st.agg = v * direction
        st.count += 1
        st.accepted += 1
        st.last_ts = t
        current = st.level
        new = _level_for(st.agg, thresholds[i], direction, current, deadband, True)
        if new > current:
            if current == 0:
                st.episode_start = t
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
                st.agg,
                thresholds[i],
                direction,
            )
            st.level = new
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
        ws = state[i].win_start
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


def reference_process(
    levels: list[int],
    thresholds: npt.NDArray[np.float64],
    direction: int,
    deadband: float,
    window_ms: int,
    readings: list[tuple[int, int, float]],
) -> list[tuple[int, int, int, int, float]]:
    """Plain-Python statement of ``process`` for differential tests.

    ``levels`` is the per-sensor starting level (mutated); ``readings`` are
    (sensor, ts, value). Returns transitions (sensor, from, to, ts, aggregate); the
    state starts empty (no open windows) and is not carried between calls.
    """
    win: dict[int, tuple[int, float, int]] = {}  # sensor -> (start, agg, count)
    last: dict[int, int] = {}
    out: list[tuple[int, int, int, int, float]] = []

    def target(i: int, agg: float, escalate_only: bool) -> int:
        cur = levels[i]
        for k in (4, 3, 2, 1):
            t = thresholds[i, k - 1]
            if np.isnan(t):
                continue
            t = t * direction
            if k > cur:
                if agg >= t:
                    return k
            elif escalate_only:
                return cur
            elif agg >= t - deadband:
                return k
        return 0

    for i, t, v in readings:
        if np.isnan(v) or t <= last.get(i, NO_WINDOW):
            continue
        start = t - t % window_ms
        if i in win and win[i][0] != start:
            wstart, wagg, _ = win.pop(i)
            new = target(i, wagg, False)
            if new < levels[i]:
                out.append((i, levels[i], new, wstart + window_ms, wagg * direction))
                levels[i] = new
        if i not in win:
            win[i] = (start, v * direction, 0)
        s, agg, c = win[i]
        win[i] = (s, max(agg, v * direction), c + 1)
        last[i] = t
        new = target(i, win[i][1], True)
        if new > levels[i]:
            out.append((i, levels[i], new, t, win[i][1] * direction))
            levels[i] = new
    return out

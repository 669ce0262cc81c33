"""Plain-Python reference for :mod:`engine.evaluation.kernels.tumbling_levels`'s window and level
steps (differential tests only).

Written as the rules read, one reading at a time with dicts, so that it shares no code
with the kernel. QC and sensor health have their own references
(:mod:`engine.evaluation.kernels.qc_reference`, the health kernel's test).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["reference_process"]


def reference_process(
    levels: list[int],
    thresholds: npt.NDArray[np.float64],
    direction: int,
    deadband: float,
    window_ms: int,
    readings: list[tuple[int, int, float]],
    for_ms: int = 0,
    lateness_ms: int = 0,
    late: list[int] | None = None,
    on_reading: bool = False,
    shift_ms: int = 0,
    right: int = 0,
) -> list[tuple[int, int, int, int, float]]:
    """Plain-Python statement of the window and level steps, for differential tests.

    ``levels`` is the per-sensor starting level (mutated); ``readings`` are usable
    (sensor, ts, value), in arrival order. Returns transitions (sensor, from, to, ts,
    value: the window's aggregate, or a late reading's own value); the indices of late
    readings are appended to ``late``. The state starts empty (no open windows) and is
    not carried between calls. Lateness is the sensor's own: a reading of the sensor's
    latest window counts in any order; one of an earlier window is late, yet from the
    window just before the latest, within ``lateness_ms`` of the sensor's latest
    reading and without ``for``, it can still raise (never lower) the level. A ``for``
    run of a level starts at the first reading whose window breaches it and ends with a
    window whose final aggregate does not; a level is entered on a reading whose window
    breaches it once its run has lasted ``for_ms``. With ``on_reading`` (``step_down:
    reading``) a level is left on the sensor's newest reading that is back past its line
    by the deadband: the window starts over at that reading and the runs of the levels
    the reading is below end. A reading taken before the sensor's latest step-down that
    arrives after it was decided by it: it counts in no window and, without ``for``,
    raises the level (at its own time) only past the level that the step-down left.
    ``shift_ms`` aligns the windows (``Params.shift_ms``); with ``right`` a window's
    end is reported 1 ms back (``Params.right``: windows closed on the right).
    """
    win: dict[int, tuple[int, float]] = {}  # sensor -> (window start, aggregate)
    last: dict[int, int] = {}
    since: dict[tuple[int, int], int] = {}  # (sensor, level) -> start of the breach run
    down: dict[int, tuple[int, int]] = {}  # sensor -> (time, level left) of its latest step-down
    out: list[tuple[int, int, int, int, float]] = []

    def used(i: int, k: int) -> bool:
        return not np.isnan(thresholds[i, k - 1])

    def line(i: int, k: int) -> float:
        return float(thresholds[i, k - 1]) * direction

    def breached(i: int, x: float) -> int:
        return next((k for k in (4, 3, 2, 1) if used(i, k) and x >= line(i, k)), 0)

    def start_of(t: int) -> int:
        """The start of the window holding ``t``: windows start at ``shift_ms`` before
        each multiple of ``window_ms`` (the rule's alignment)."""
        return t - (t + shift_ms) % window_ms

    def decided(i: int, t: int) -> int:
        """The level a reading at ``t`` must pass to raise: the current one, or the one
        the sensor's latest step-down left if the reading was taken before it."""
        if on_reading and i in down and t < down[i][0]:
            return max(levels[i], down[i][1])
        return levels[i]

    for j, (i, t, v) in enumerate(readings):
        if np.isnan(v):
            continue
        x = v * direction
        if i in last and t < start_of(last[i]):
            end = start_of(t) + window_ms
            just_before = end == start_of(last[i])
            if for_ms == 0 and just_before and end + lateness_ms > last[i]:
                if breached(i, x) > decided(i, t):
                    out.append((i, levels[i], breached(i, x), t, v))
                    levels[i] = breached(i, x)
            elif late is not None:
                late.append(j)
            continue
        if on_reading and i in down and t < down[i][0]:
            # Before the step-down, arriving after it: decided, unless above what it left.
            if for_ms == 0 and breached(i, x) > decided(i, t):
                out.append((i, levels[i], breached(i, x), t, v))
                levels[i] = breached(i, x)
            continue
        if t == last.get(i):
            continue
        start = start_of(t)
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
                out.append((i, levels[i], held, wstart + window_ms - right, wagg * direction))
                levels[i] = held
            # A breach run ends with a window whose final aggregate is below its line.
            for k in range(breached(i, wagg) + 1, 5):
                since.pop((i, k), None)
        agg = max(win[i][1], x) if i in win else x
        newest = t > last.get(i, t - 1)
        win[i] = (start, agg)
        last[i] = max(last.get(i, t), t)
        if on_reading and newest and levels[i] > 0:
            stays = next(
                (k for k in range(levels[i], 0, -1) if used(i, k) and x >= line(i, k) - deadband),
                0,
            )
            if stays < levels[i]:
                out.append((i, levels[i], stays, t, v))
                down[i] = (t, levels[i])
                levels[i] = stays
                agg = x
                win[i] = (start, agg)
                for k in range(breached(i, x) + 1, 5):
                    since.pop((i, k), None)
        raw = breached(i, agg)
        for k in range(1, breached(i, x) + 1):  # a run begins at its first breaching reading
            since[(i, k)] = min(since.get((i, k), t), t)
        due = next(
            (
                k
                for k in range(raw, levels[i], -1)
                if (i, k) in since and used(i, k) and last[i] - since[(i, k)] >= for_ms
            ),
            levels[i],
        )
        if due > levels[i]:
            # a run completed by a reading out of order was complete at the latest one
            out.append((i, levels[i], due, last[i] if for_ms else t, agg * direction))
            levels[i] = due
    return out

"""The early-firing tumbling kernel's state (``tumbling_levels``): one 128-byte block
per sensor, the rule's constants, and the output arrays.

Memory: one 128-byte block per sensor (``BLOCK_DTYPE``), allocated on a 128-byte
boundary, two cache lines that sit side by side in memory. The first line holds
everything a reading changes in the common case; the second holds the sensor's four
thresholds (the rule's, in the metric's unit, NaN for unused levels; written by
:func:`set_thresholds`), which a reading reads when its window's aggregate moves, and
the times written only when an episode or a QC failure run begins or a level is left
on a reading. Two adjacent
lines of one block cost much less than two lines in separate arrays: measured at 10 M
sensors, 27 against 19 M readings/s for the kernel alone. The mutable state, which
snapshots carry (``STATE_FIELDS``), is 89 bytes per sensor; the thresholds take 32 and
7 are padding. All times are event time, ms since the epoch (UTC).

Compact fields and their documented limits (checked by ``ThresholdRule`` and
:func:`make_params`):

* the window start is not stored: it is ``last_ts`` rounded down to the window (from
  the origin ``Params.shift_ms`` aligns: local days, ``window_start``), since
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

from engine.evaluation.kernels._common import NO_TS, Q_FAIL, Q_SUSPECT
from engine.evaluation.kernels.health import SILENT, change_arrays

__all__ = [
    "AGE_CAP",
    "BLOCK_DTYPE",
    "CLOSED_BIT",
    "FLAT_CAP",
    "LEVEL_MASK",
    "NEVER",
    "QC_ALERT_BIT",
    "RAW_BITS",
    "RUN_CAP",
    "SILENT",
    "SILENT_BIT",
    "STATE_FIELDS",
    "Params",
    "earliest_open_end",
    "make_params",
    "new_state",
    "outputs",
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
        # ``step_down: reading``: the sensor's latest step-down on a reading, its time and
        # the level it left (a reading taken before it, arriving after, was decided by it).
        ("down_ts", "<i8"),
        ("down_from", "u1"),
        ("_pad", "u1", (7,)),
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
    #: The rule's ``step_down: reading``: a level is left on the sensor's newest reading
    #: that is back past its line by the deadband, not when the window closes.
    on_reading: bool = False
    #: The windows' alignment: they start where ``(t + shift_ms) % window_ms == 0``
    #: (``ThresholdRule.window_shift_ms``), 0 <= shift_ms < window_ms.
    shift_ms: int = 0
    #: 1: the windows hold ``(b, b + window_ms]`` (``ThresholdRule.window_closed_right``);
    #: ``shift_ms`` then buckets them one ms on, and a window's end is reported 1 ms back.
    right: int = 0


def make_params(
    direction: int,
    deadband: float,
    window_ms: int,
    for_ms: int,
    fail_after: int,
    qc: tuple[float, float, float, float, float, float, float, int, int],
    lateness_ms: int = 0,
    drop_suspect: bool = False,
    on_reading: bool = False,
    shift_ms: int = 0,
    right: int = 0,
) -> Params:
    """``qc``: fail_lo, fail_hi, suspect_lo, suspect_hi, spike, rate_per_h, flat_eps,
    flat_suspect_n, flat_fail_n; ``drop_suspect``: SUSPECT readings move no window either;
    ``on_reading``: step down on the reading (``Params.on_reading``); ``shift_ms``: the
    windows' alignment (``Params.shift_ms``). Raises ValueError past the compact fields'
    limits."""
    drop_from = Q_SUSPECT if drop_suspect else Q_FAIL
    p = Params(
        direction,
        float(deadband),
        window_ms,
        for_ms,
        fail_after,
        *qc,
        lateness_ms,
        drop_from,
        on_reading,
        shift_ms,
        right,
    )
    if not 0 <= for_ms <= AGE_CAP:
        raise ValueError(f"for_ms {for_ms} outside 0..{AGE_CAP} (49.7 days)")
    if not 0 <= shift_ms < window_ms:
        raise ValueError(f"shift_ms {shift_ms} outside 0..window_ms {window_ms}")
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
    for name in ("last_ts", "qc_ts", "seen_ts", "episode_start", "fail_since", "down_ts"):
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


def earliest_open_end(state: npt.NDArray[np.void], window_ms: int, shift_ms: int = 0) -> int:
    """The end (ms) of the earliest window still open, int64 max when none is; windows
    aligned by ``shift_ms`` (``Params.shift_ms``)."""
    is_open = ~np.isnan(state["agg"]) & (state["levels"] & CLOSED_BIT == 0)
    last = state["last_ts"][is_open]
    if not len(last):
        return NEVER
    first = int(last.min())
    return first - (first + shift_ms) % window_ms + window_ms


def silent_due(state: npt.NDArray[np.void], stale_ms: int, watermark: int) -> npt.NDArray[np.intp]:
    """Sensors with no reading in the ``stale_ms`` before ``watermark``, not yet reported
    silent; marks them silent. Their alerts date from ``seen_ts + stale_ms``."""
    seen = state["seen_ts"]
    quiet = (state["health"] & SILENT_BIT) == 0
    due = np.flatnonzero(quiet & (seen != NO_TS) & (seen <= watermark - stale_ms))
    state["health"][due] |= SILENT_BIT
    return due

"""Per-sensor reading identity: a reading already taken is dropped, one out of order is not.

At-least-once delivery (MQTT QoS 1 after a gateway crash, a device that did not see its
acknowledgement) brings readings again; a sum, count or mean must count each reading
once. Devices also deliver a reading after their next one now and then (NB-IoT and
cellular links reorder). A sensor's newest reading time alone cannot tell the two
apart, so each sensor keeps the times of its ``RECENT`` newest readings taken
(``recent``, newest first, ``NO_TS`` while fewer were taken):

* newer than all of them: new;
* equal to one of them: a repeat, dropped;
* between them (older than the newest, newer than the oldest kept), or older than all
  of them while fewer than ``RECENT`` were ever taken (the row is not full): new, out
  of order, taken;
* older than all ``RECENT`` of them: cannot be told from a repeat: ``UNKNOWN``, not
  counted (the caller dead-letters it with its reason).

Whether its window is still open for it is the window kernel's question, not this one's.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from engine.evaluation.kernels._common import NO_TS

__all__ = ["NEW", "RECENT", "REPEAT", "UNKNOWN", "new_recent", "taken"]

#: Reading times kept per sensor: a reading can come this many places out of order.
RECENT = 4
NEW, REPEAT, UNKNOWN = 0, 1, 2


def new_recent(n: int) -> npt.NDArray[np.int64]:
    """Recent reading times of ``n`` sensors, none yet: shape (n, RECENT), ms."""
    return np.full((n, RECENT), NO_TS, np.int64)


@njit(cache=True)
def _taken(recent, sensor, ts, codes):  # type: ignore[no-untyped-def]
    k = recent.shape[1]
    for r in range(ts.shape[0]):
        row = recent[sensor[r]]
        t = ts[r]
        # Its place among the kept times (newest first), or a repeat of one of them.
        j = 0
        while j < k and row[j] > t:
            j += 1
        if j < k and row[j] == t:
            codes[r] = REPEAT
            continue
        if j == k:  # older than all of them (NO_TS sorts last: the row is full)
            codes[r] = UNKNOWN
            continue
        codes[r] = NEW
        for m in range(k - 1, j, -1):
            row[m] = row[m - 1]
        row[j] = t


def taken(
    recent: npt.NDArray[np.int64], sensor: npt.NDArray[np.integer], ts: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint8]:
    """``NEW``, ``REPEAT`` or ``UNKNOWN`` per reading (module docstring); ``recent``
    advances in place. Any order."""
    codes = np.empty(len(ts), np.uint8)
    _taken(recent, sensor, ts, codes)
    return codes

"""Per-sensor event-time order: a reading not newer than its sensor's last is dropped.

Devices send a sensor's readings in order over one connection; what arrives out of
order per sensor is in practice a redelivery (MQTT QoS 1 after a gateway crash) of a
reading already counted. Dropping readings at or before the sensor's last accepted time
makes at-least-once delivery count each reading once in sums, counts and means.
(Lateness still matters *across* sensors: a window waits for the slower gauges.)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = ["fresh"]


@njit(cache=True)
def _fresh(last_ts, sensor, ts, keep):  # type: ignore[no-untyped-def]
    n = 0
    for r in range(ts.shape[0]):
        i = sensor[r]
        if ts[r] > last_ts[i]:
            last_ts[i] = ts[r]
            keep[r] = True
        else:
            keep[r] = False
            n += 1
    return n


def fresh(
    last_ts: npt.NDArray[np.int64], sensor: npt.NDArray[np.integer], ts: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.bool_], int]:
    """Mask of readings newer than their sensor's last (``last_ts`` advances in place),
    and how many were not. Readings must come in event-time order per sensor."""
    keep = np.empty(len(ts), dtype=np.bool_)
    return keep, int(_fresh(last_ts, sensor, ts, keep))

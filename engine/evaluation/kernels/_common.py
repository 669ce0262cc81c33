"""Constants and small helpers shared by the kernels.

Kernels run inside ``numba.njit`` where IntEnum members are awkward, so the quality
flags of :class:`engine.contracts.batch.Quality` and the time sentinels are plain module ints here;
``tests/unit/test_kernel_common.py`` checks they match the enum.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "MS_PER_HOUR",
    "NO_TS",
    "Q_FAIL",
    "Q_GOOD",
    "Q_MISSING",
    "Q_SUSPECT",
    "Q_UNCHECKED",
    "TS_MAX",
    "check_sensors",
]

Q_UNCHECKED = 0
Q_GOOD = 1
Q_SUSPECT = 3
Q_FAIL = 4
Q_MISSING = 9

#: "no timestamp yet" in int64 state fields (ms since epoch, UTC)
NO_TS = int(np.iinfo(np.int64).min)
#: "never" / "check disabled" for int64 time spans
TS_MAX = int(np.iinfo(np.int64).max)

MS_PER_HOUR = 3_600_000.0


def check_sensors(sensor: npt.NDArray[np.integer], n_sensors: int, kernel: str) -> None:
    """Raise IndexError for a sensor index outside the state: the compiled kernels do not
    bounds-check, so a bad index would silently write into another sensor's memory."""
    if len(sensor) and (int(sensor.max()) >= n_sensors or int(sensor.min()) < 0):
        raise IndexError(
            f"{kernel}: sensor index {int(sensor.max())} outside the state of {n_sensors} sensors"
            if int(sensor.max()) >= n_sensors
            else f"{kernel}: negative sensor index {int(sensor.min())}"
        )

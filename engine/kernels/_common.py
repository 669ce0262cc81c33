"""Constants and small helpers shared by the kernels.

Kernels run inside ``numba.njit`` where IntEnum members are awkward, so the quality
flags of :class:`engine.batch.Quality` and the time sentinels are plain module ints here;
``tests/unit/test_kernel_common.py`` checks they match the enum.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MS_PER_HOUR",
    "NO_TS",
    "Q_FAIL",
    "Q_GOOD",
    "Q_MISSING",
    "Q_SUSPECT",
    "Q_UNCHECKED",
    "TS_MAX",
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

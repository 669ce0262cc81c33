"""A plain HJ 633 recomputation for tests, written from ``shared/domain/FACTS.md`` §3
alone (not from ``engine/``): the independent reference the engine's AQI is held to.

IAQI by linear interpolation between the §3.1 breakpoints, rounded up (§3.2); 500 above
a table's top; none where a table has no breakpoint (SO2 1-h above 800, O3 8-h above
800). AQI = the largest IAQI; primary pollutant(s) = those equal to it, when AQI > 50.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

STEPS = (0, 50, 100, 150, 200, 300, 400, 500)
TABLE = {
    "so2_1h": (0, 150, 500, 650, 800),
    "no2_1h": (0, 100, 200, 700, 1200, 2340, 3090, 3840),
    "co_1h": (0, 5, 10, 35, 60, 90, 120, 150),
    "o3_1h": (0, 160, 200, 300, 400, 800, 1000, 1200),
    "o3_8h": (0, 100, 160, 215, 265, 800),
    "pm10_24h": (0, 50, 150, 250, 350, 420, 500, 600),
    "pm2_5_24h": (0, 35, 75, 115, 150, 250, 350, 500),
}


def iaqi(table: str, c: float) -> float:
    """The IAQI of concentration ``c`` on ``table``; NaN when there is none."""
    bp = TABLE[table]
    if math.isnan(c) or c < 0:
        return math.nan
    if c > bp[-1]:
        return 500.0 if len(bp) == len(STEPS) else math.nan
    for j in range(1, len(bp)):
        if c <= bp[j]:
            raw = (STEPS[j] - STEPS[j - 1]) / (bp[j] - bp[j - 1]) * (c - bp[j - 1]) + STEPS[j - 1]
            return float(math.ceil(round(raw, 9)))
    raise AssertionError("unreachable")


def aqi(sub: dict[str, float]) -> tuple[float, tuple[str, ...]]:
    """(AQI, primary pollutants) of sub-indices keyed by pollutant; NaN ones are absent."""
    present = {k: v for k, v in sub.items() if not math.isnan(v)}
    if not present:
        return math.nan, ()
    top = max(present.values())
    return top, tuple(sorted(k for k, v in present.items() if v == top)) if top > 50 else ()


def window_mean(values: Sequence[float], i: int, hours: int, need: int = 1) -> float:
    """Mean of hours i-hours+1..i (the moving mean at hour i), over at least ``need``
    valid hours; NaN before the window is full or with fewer valid hours."""
    if i < hours - 1:
        return math.nan
    valid = [v for v in values[i - hours + 1 : i + 1] if not math.isnan(v)]
    return sum(valid) / len(valid) if len(valid) >= need else math.nan


def hourly(
    pm2_5: float, pm10: float, so2: float, no2: float, co: float, o3: float, o3_8h: float
) -> tuple[float, tuple[str, ...]]:
    """Real-time AQI from the PM concentrations given (24-h means, or 1-h values read
    against the 24-h breakpoints), 1-h gases and the O3 8-h moving mean."""
    return aqi({
        "pm2_5": iaqi("pm2_5_24h", pm2_5), "pm10": iaqi("pm10_24h", pm10),
        "so2": iaqi("so2_1h", so2), "no2": iaqi("no2_1h", no2), "co": iaqi("co_1h", co),
        "o3_1h": iaqi("o3_1h", o3), "o3_8h": iaqi("o3_8h", o3_8h),
    })  # fmt: skip

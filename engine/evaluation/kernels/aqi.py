"""HJ 633-2012 air quality index: IAQI per pollutant, AQI and primary pollutant(s).

Contract (``shared/domain/FACTS.md`` §3)
----------------------------------------
Concentrations in µg/m³, CO in mg/m³; NaN = not measured. Everything is vectorised
over NumPy arrays (one element per station-hour); there is no per-sensor state, so this
module is plain NumPy rather than a numba kernel. The moving averages that real-time
reporting needs (O3 8-h, PM 24-h) come from :func:`moving_mean` on an hourly series, or,
in the live engine, from a sliding ``mean`` window (:mod:`engine.evaluation.kernels.windows`, hourly
buckets) over hourly values.

- IAQI_P = (IAQI_hi − IAQI_lo)/(BP_hi − BP_lo)·(C − BP_lo) + IAQI_lo, **rounded up**
  (``Math.Ceiling`` in the Suncere reference implementation); 500 above the table's top;
  NaN for a negative or NaN concentration;
- SO2 1-h above 800 µg/m³ has no 1-h IAQI: the SO2 24-h IAQI is used instead;
  O3 8-h above 800 µg/m³ has no 8-h IAQI: the O3 1-h IAQI is used instead;
- AQI = max of the IAQIs present; primary pollutant(s) = those whose IAQI equals the AQI,
  only when AQI > 50 (ties all listed); exceedance pollutants have IAQI > 100;
- real-time (hourly) report, current practice: PM2.5 and PM10 24-h moving averages, SO2,
  NO2, CO, O3 1-h, O3 8-h moving average (hours X−7..X) (:func:`realtime_aqi`);
  daily report: 24-h means, O3 daily max 1-h and max 8-h (:func:`daily_aqi`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "BREAKPOINTS",
    "IAQI_STEPS",
    "AQIResult",
    "aqi_category",
    "aqi_from_iaqi",
    "daily_aqi",
    "iaqi",
    "moving_mean",
    "realtime_aqi",
]

F8 = npt.NDArray[np.float64]
ArrayLike = F8 | float

IAQI_STEPS = np.array([0.0, 50, 100, 150, 200, 300, 400, 500])
_NA = np.nan
#: HJ 633-2012 Table 1; NaN = no breakpoint (the pollutant has no IAQI there)
BREAKPOINTS: dict[str, F8] = {
    "so2_24h": np.array([0.0, 50, 150, 475, 800, 1600, 2100, 2620]),
    "so2_1h": np.array([0.0, 150, 500, 650, 800, _NA, _NA, _NA]),
    "no2_24h": np.array([0.0, 40, 80, 180, 280, 565, 750, 940]),
    "no2_1h": np.array([0.0, 100, 200, 700, 1200, 2340, 3090, 3840]),
    "pm10_24h": np.array([0.0, 50, 150, 250, 350, 420, 500, 600]),
    "co_24h": np.array([0.0, 2, 4, 14, 24, 36, 48, 60]),
    "co_1h": np.array([0.0, 5, 10, 35, 60, 90, 120, 150]),
    "o3_1h": np.array([0.0, 160, 200, 300, 400, 800, 1000, 1200]),
    "o3_8h": np.array([0.0, 100, 160, 215, 265, 800, _NA, _NA]),
    "pm2_5_24h": np.array([0.0, 35, 75, 115, 150, 250, 350, 500]),
}


class AQIResult(NamedTuple):
    aqi: F8  # NaN where no pollutant was measured
    iaqi: dict[str, F8]  # per indicator used
    primary: dict[str, npt.NDArray[np.bool_]]  # indicator is a primary pollutant


def iaqi(pollutant: str, conc: ArrayLike) -> F8:
    """IAQI of ``pollutant`` (a key of :data:`BREAKPOINTS`), rounded up; NaN = none."""
    bp = BREAKPOINTS[pollutant]
    valid = ~np.isnan(bp)
    bp_v, iaqi_v = bp[valid], IAQI_STEPS[valid]
    c = np.asarray(conc, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        raw = np.interp(c, bp_v, iaqi_v)
        raw = np.where(c > bp_v[-1], np.where(valid.all(), 500.0, np.nan), raw)
        raw = np.where((c < 0) | np.isnan(c), np.nan, raw)
    # round to 1e-9 first: 75.00000000000001 from float noise must not become 76
    return np.ceil(np.round(raw, 9))


def aqi_from_iaqi(iaqis: Mapping[str, F8]) -> AQIResult:
    """AQI = max IAQI; primary pollutant(s) where IAQI == AQI and AQI > 50."""
    names = list(iaqis)
    stack = np.vstack([np.atleast_1d(iaqis[k]) for k in names])
    all_nan = np.isnan(stack).all(axis=0)
    aqi = np.where(all_nan, np.nan, np.nanmax(np.where(all_nan, 0.0, stack), axis=0))
    primary = {k: (stack[i] == aqi) & (aqi > 50) for i, k in enumerate(names)}
    return AQIResult(aqi, {k: np.atleast_1d(iaqis[k]) for k in names}, primary)


def realtime_aqi(
    *,
    pm2_5_24h: ArrayLike,
    pm10_24h: ArrayLike,
    so2_1h: ArrayLike,
    no2_1h: ArrayLike,
    co_1h: ArrayLike,
    o3_1h: ArrayLike,
    o3_8h: ArrayLike,
    so2_24h: ArrayLike = np.nan,
) -> AQIResult:
    """Hourly AQI by current practice (FACTS.md §3.2): 24-h moving PM, 1-h gases, O3 8-h."""
    so2_hour = iaqi("so2_1h", so2_1h)
    so2 = np.where(np.asarray(so2_1h) > 800, iaqi("so2_24h", so2_24h), so2_hour)
    return aqi_from_iaqi(
        {
            "pm2_5": iaqi("pm2_5_24h", pm2_5_24h),
            "pm10": iaqi("pm10_24h", pm10_24h),
            "so2": so2,
            "no2": iaqi("no2_1h", no2_1h),
            "co": iaqi("co_1h", co_1h),
            "o3_1h": iaqi("o3_1h", o3_1h),
            "o3_8h": iaqi("o3_8h", o3_8h),  # NaN above 800: the O3 1-h IAQI stands alone
        }
    )


def daily_aqi(
    *,
    pm2_5_24h: ArrayLike,
    pm10_24h: ArrayLike,
    so2_24h: ArrayLike,
    no2_24h: ArrayLike,
    co_24h: ArrayLike,
    o3_8h_max: ArrayLike,
    o3_1h_max: ArrayLike = np.nan,
) -> AQIResult:
    """Daily AQI: 24-h means and the O3 daily maximum 8-h (1-h when the 8-h is > 800)."""
    o3_8 = iaqi("o3_8h", o3_8h_max)
    o3 = np.where(np.asarray(o3_8h_max) > 800, iaqi("o3_1h", o3_1h_max), o3_8)
    return aqi_from_iaqi(
        {
            "pm2_5": iaqi("pm2_5_24h", pm2_5_24h),
            "pm10": iaqi("pm10_24h", pm10_24h),
            "so2": iaqi("so2_24h", so2_24h),
            "no2": iaqi("no2_24h", no2_24h),
            "co": iaqi("co_24h", co_24h),
            "o3_8h": o3,
        }
    )


def aqi_category(aqi: ArrayLike) -> npt.NDArray[np.int8]:
    """Level I..VI as 1..6 (0–50, 51–100, 101–150, 151–200, 201–300, >300); 0 for NaN."""
    a = np.asarray(aqi, dtype=np.float64)
    cat = np.searchsorted(np.array([50.0, 100, 150, 200, 300]), a, side="left") + 1
    return np.where(np.isnan(a), 0, cat).astype(np.int8)


def moving_mean(hourly: F8, hours: int, min_valid: int) -> F8:
    """Mean of hours X−hours+1..X at each hour X, NaN where fewer than ``min_valid`` hours.

    HJ 663-2013 validity: 8-h O3 needs 6 valid hours, 24-h PM needs 20.
    """
    x = np.asarray(hourly, dtype=np.float64)
    ok = ~np.isnan(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    ccnt = np.concatenate([[0], np.cumsum(ok)])
    idx = np.arange(len(x))
    lo = np.maximum(idx - hours + 1, 0)
    total = csum[idx + 1] - csum[lo]
    count = ccnt[idx + 1] - ccnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count >= min_valid, total / np.maximum(count, 1), np.nan)

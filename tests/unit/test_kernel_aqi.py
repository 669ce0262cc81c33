"""AQI (HJ 633-2012): the worked examples of FACTS.md §3.3, the exceptions, and a scalar
re-implementation from the breakpoint table compared on generated concentrations."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.evaluation.kernels.aqi import (
    aqi_category,
    daily_aqi,
    iaqi,
    moving_mean,
    realtime_aqi,
)

# FACTS.md §3.1, typed in again here: a transcription error in the module shows up
TABLE = {
    "so2_24h": [0, 50, 150, 475, 800, 1600, 2100, 2620],
    "so2_1h": [0, 150, 500, 650, 800],
    "no2_24h": [0, 40, 80, 180, 280, 565, 750, 940],
    "no2_1h": [0, 100, 200, 700, 1200, 2340, 3090, 3840],
    "pm10_24h": [0, 50, 150, 250, 350, 420, 500, 600],
    "co_24h": [0, 2, 4, 14, 24, 36, 48, 60],
    "co_1h": [0, 5, 10, 35, 60, 90, 120, 150],
    "o3_1h": [0, 160, 200, 300, 400, 800, 1000, 1200],
    "o3_8h": [0, 100, 160, 215, 265, 800],
    "pm2_5_24h": [0, 35, 75, 115, 150, 250, 350, 500],
}
STEPS = [0, 50, 100, 150, 200, 300, 400, 500]


def scalar_iaqi(pollutant: str, c: float) -> float:
    bp = TABLE[pollutant]
    if math.isnan(c) or c < 0:
        return math.nan
    for i in range(1, len(bp)):
        if c <= bp[i]:
            x = (STEPS[i] - STEPS[i - 1]) / (bp[i] - bp[i - 1]) * (c - bp[i - 1]) + STEPS[i - 1]
            return float(math.ceil(round(x, 9)))
    return 500.0 if len(bp) == 8 else math.nan


def test_worked_example_daily_aqi_110() -> None:
    r = daily_aqi(pm2_5_24h=80, pm10_24h=120, so2_24h=10, no2_24h=45, co_24h=1.0, o3_8h_max=170)
    got = {k: float(v[0]) for k, v in r.iaqi.items()}
    assert got == {"pm2_5": 107, "pm10": 85, "so2": 10, "no2": 57, "co": 25, "o3_8h": 110}
    assert r.aqi.tolist() == [110]
    assert [k for k, v in r.primary.items() if v[0]] == ["o3_8h"]
    assert [k for k, v in r.iaqi.items() if v[0] > 100] == ["pm2_5", "o3_8h"]  # exceedance
    assert aqi_category(r.aqi).tolist() == [3]


def test_worked_example_hourly_aqi_75() -> None:
    r = realtime_aqi(
        pm2_5_24h=28, pm10_24h=60, so2_1h=20, no2_1h=150, co_1h=0.8, o3_1h=90, o3_8h=70
    )
    got = {k: float(v[0]) for k, v in r.iaqi.items()}
    assert got == {"pm2_5": 40, "pm10": 55, "so2": 7, "no2": 75, "co": 8, "o3_1h": 29, "o3_8h": 35}
    assert r.aqi.tolist() == [75]
    assert [k for k, v in r.primary.items() if v[0]] == ["no2"]
    assert aqi_category(r.aqi).tolist() == [2]


def test_so2_above_800_uses_24h_and_o3_8h_above_800_uses_1h() -> None:
    kw = dict(pm2_5_24h=10, pm10_24h=10, no2_1h=10, co_1h=0.1, o3_1h=10, o3_8h=10)
    r = realtime_aqi(so2_1h=900, so2_24h=475, **kw)  # type: ignore[arg-type]
    assert r.iaqi["so2"].tolist() == [150]
    assert math.isnan(realtime_aqi(so2_1h=900, **kw).iaqi["so2"][0])  # type: ignore[arg-type]
    d = daily_aqi(
        pm2_5_24h=10, pm10_24h=10, so2_24h=10, no2_24h=10, co_24h=0.1, o3_8h_max=850, o3_1h_max=1000
    )
    assert d.iaqi["o3_8h"].tolist() == [400]
    assert math.isnan(iaqi("o3_8h", 850.0)[()])


def test_primary_pollutants_tie_and_none_at_or_below_50() -> None:
    r = realtime_aqi(pm2_5_24h=75, pm10_24h=150, so2_1h=0, no2_1h=0, co_1h=0, o3_1h=0, o3_8h=0)
    assert r.aqi.tolist() == [100]
    assert sorted(k for k, v in r.primary.items() if v[0]) == ["pm10", "pm2_5"]
    low = realtime_aqi(pm2_5_24h=35, pm10_24h=0, so2_1h=0, no2_1h=0, co_1h=0, o3_1h=0, o3_8h=0)
    assert low.aqi.tolist() == [50]
    assert not any(v[0] for v in low.primary.values())


def test_moving_mean_matches_nanmean_and_needs_enough_hours() -> None:
    x = np.array([1.0, 2, np.nan, 4, 5, 6, 7, 8, 9, np.nan])
    got = moving_mean(x, 8, 6)
    for i in range(len(x)):
        w = x[max(0, i - 7) : i + 1]
        want = np.nanmean(w) if np.count_nonzero(~np.isnan(w)) >= 6 else np.nan
        np.testing.assert_allclose(got[i], want, rtol=1e-12)


conc = st.one_of(st.floats(0, 3000), st.sampled_from([0.0, 35.0, 75.0, 800.0, 801.0, math.nan]))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(TABLE)), st.lists(conc, min_size=1, max_size=20))
def test_vectorised_iaqi_matches_scalar_table(pollutant: str, cs: list[float]) -> None:
    got = iaqi(pollutant, np.array(cs))
    want = [scalar_iaqi(pollutant, c) for c in cs]
    np.testing.assert_array_equal(got, want)

"""AQI kernel against the AQI published for Beijing 东四 and 天坛, 2015-11-27..12-02 (hourly).

Inputs, as current real-time practice (FACTS.md §3.2; data/README.md): the file's 24-h
moving PM2.5 and PM10 columns, the hourly SO2, NO2, CO and O3, and the O3 8-h moving
average computed here from the hourly O3 (hours X−7..X, at least 6 valid).

Measured (138 hours with a published AQI per station):

==========  =====  ==================================  =====================
station     exact  consistent with rounded 24-h PM(*)  not explained
==========  =====  ==================================  =====================
东四 Dongsi  78     128 (92.8 %)                        10
天坛 Tiantan 74     134 (97.1 %)                        4
==========  =====  ==================================  =====================

(*) the file's 24-h PM columns are whole µg/m³, while the publisher took the IAQI of the
unrounded mean and rounded it up: a published value one above ours (e.g. 2015-11-30 03h:
PM2.5-24h 271 → IAQI 321, published 322) is what ``271.4`` gives. So a published AQI counts
as consistent when it lies between our AQI for PM − 0.5 and PM + 0.5.

The rest, looked at one by one:

- 东四 2015-11-30 22h .. 12-01 02h: published 480 for five hours while PM2.5-24h climbs
  from 430 to 454; the PM10 columns are empty there, and 480 is the PM10-24h IAQI of
  580 µg/m³: the publisher had a PM10 24-h mean that the file lacks;
- both stations 2015-12-02 05h: the row after a gap (no 24-h PM on the hour before); the
  published value matches neither the file's 24-h PM nor its neighbours;
- a few single hours (11-27 18h, 11-28 00h, 02h) where the published value sits between
  the file's 24-h PM of that hour and of the next: the AQI and the concentrations in the
  source come from two files (``beijing_all`` / ``beijing_extra``), apparently snapshots
  taken at slightly different times;
- 2015-12-02 23h (both): published 15/17 while ours is 22/24 from our O3 8-h sub-index:
  the publisher's O3 8-h there is lower than the mean of the file's hours X−7..X (an AQI
  ≤ 50, "excellent" either way).

The floors asserted are the measured rates rounded down, so a regression in the
breakpoints, the interpolation or the rounding shows up as a drop.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from engine.evaluation.kernels.aqi import moving_mean, realtime_aqi

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "aqi"


def _columns(name: str) -> dict[str, np.ndarray]:
    (path,) = DATA.glob(f"beijing_{name}_*_hourly.csv")
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cols = ("AQI_published", "PM2.5_24h", "PM10_24h", "SO2", "NO2", "CO", "O3")
    return {c: np.array([float(r[c]) if r[c] else np.nan for r in rows]) for c in cols}


def _aqi(c: dict[str, np.ndarray], pm_shift: float = 0.0) -> np.ndarray:
    return realtime_aqi(
        pm2_5_24h=np.maximum(c["PM2.5_24h"] + pm_shift, 0.0),
        pm10_24h=np.maximum(c["PM10_24h"] + pm_shift, 0.0),
        so2_1h=c["SO2"],
        no2_1h=c["NO2"],
        co_1h=c["CO"],
        o3_1h=c["O3"],
        o3_8h=moving_mean(c["O3"], 8, 6),
    ).aqi


@pytest.mark.parametrize(
    ("station", "exact_floor", "consistent_floor"),
    [("dongsi", 0.56, 0.92), ("tiantan", 0.53, 0.97)],
)
def test_agreement_with_published_aqi(
    station: str, exact_floor: float, consistent_floor: float
) -> None:
    c = _columns(station)
    pub = c["AQI_published"]
    has = ~np.isnan(pub)
    assert has.sum() == 138  # 144 hours, 6 without a published AQI
    ours, lo, hi = _aqi(c), _aqi(c, -0.5), _aqi(c, +0.5)
    exact = np.mean(ours[has] == pub[has])
    consistent = np.mean((lo[has] <= pub[has]) & (pub[has] <= hi[has]))
    assert exact >= exact_floor
    assert consistent >= consistent_floor
    # ours is above the published value beyond what rounding allows only in the one
    # low-AQI hour explained above (2015-12-02 23h)
    assert np.sum(pub[has] < lo[has]) == 1

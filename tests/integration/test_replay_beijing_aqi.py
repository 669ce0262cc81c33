"""`vigil replay` over the real Beijing hourly series with the air-quality pack: the AQI
the engine derives, hour by hour, against the AQI Beijing published.

The agreement figures and every disagreement are explained in
``tests/unit/test_validation_aqi.py`` (rounded 24-h PM columns, a PM10 24-h mean the file
lacks, snapshot skew between the two source files). Here the engine's derivation stage
must give exactly the kernel's AQI from the same columns, and its agreement with the
published values must not fall below those measured floors.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from engine.evaluation.kernels.aqi import moving_mean, realtime_aqi

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "aqi"
EXAMPLE = ROOT / "rules" / "examples" / "beijing_aqi"


def _published(path: Path) -> tuple[list[int], dict[str, np.ndarray]]:
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    hours = [int(datetime.fromisoformat(r["timestamp"]).timestamp() * 1000) for r in rows]
    cols = ("AQI_published", "PM2.5_24h", "PM10_24h", "SO2", "NO2", "CO", "O3")
    return hours, {c: np.array([float(r[c]) if r[c] else np.nan for r in rows]) for c in cols}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "station", "exact_floor"),
    [("dongsi", "BJ-DONGSI", 0.56), ("tiantan", "BJ-TIANTAN", 0.53)],
)
def test_engine_aqi_matches_kernel_and_published(
    tmp_path: Path, name: str, station: str, exact_floor: float
) -> None:
    (source,) = DATA.glob(f"beijing_{name}_*_hourly.csv")
    metrics = tmp_path / "metrics.csv"
    run = subprocess.run(
        [sys.executable, "-m", "engine.tools.cli", "replay",
         "--rules", str(ROOT / "rules" / "packs" / "air_quality.yaml"),
         "--stations", str(EXAMPLE / "stations.yaml"), "--input", str(source),
         "--station", station, "--wide", "--metrics-out", str(metrics),
         "--alerts-out", str(tmp_path / "alerts.jsonl")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    with metrics.open() as f:
        derived = {
            datetime.fromisoformat(r["time"].replace("Z", "+00:00")): (
                float(r["value"]),
                r["detail"],
            )
            for r in csv.DictReader(f)
            if r["source"] == "derive.aqi"
        }
    hours, c = _published(source)
    kernel = realtime_aqi(
        pm2_5_24h=c["PM2.5_24h"], pm10_24h=c["PM10_24h"], so2_1h=c["SO2"], no2_1h=c["NO2"],
        co_1h=c["CO"], o3_1h=c["O3"], o3_8h=moving_mean(c["O3"], 8, 6),
    ).aqi  # fmt: skip
    ours = np.array(
        [derived.get(datetime.fromtimestamp(h / 1000).astimezone(), (np.nan, ""))[0] for h in hours]
    )
    # The engine's AQI is the kernel's from the same columns, except in hours where the
    # file lacks a 24-h PM mean: there the engine falls back to the mean of the hourly PM
    # it has seen, as real-time practice does (those hours have no published AQI).
    same = (ours == kernel) | (np.isnan(ours) & np.isnan(kernel))
    lacks_pm = np.isnan(c["PM2.5_24h"]) | np.isnan(c["PM10_24h"])
    assert same.sum() >= 130
    assert not (~same & ~lacks_pm).any()
    published = c["AQI_published"]
    has = ~np.isnan(published)
    assert np.mean(ours[has] == published[has]) >= exact_floor
    # The heavy-pollution week fires the pack's sustained rule and reaches red.
    alerts = (tmp_path / "alerts.jsonl").read_text()
    assert '"rule_id": "aqi.heavy_sustained"' in alerts and '"level": "red"' in alerts
    primaries = {d for _, d in derived.values()}
    assert "pm2_5" in primaries

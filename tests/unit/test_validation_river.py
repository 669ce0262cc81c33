"""Levels kernel on a real flood: USGS 08211520 Oso Creek, 2023-04-22..28 (15-min stage, ft).

NWS categories for the gauge (OOST2): action 11, flood 20, moderate 20, major 25 ft, used
as blue, yellow, orange, red. With no for-duration and no deadband, every level change
the kernel reports must be exactly a crossing found directly in the series with NumPy.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import numpy as np

from engine.evaluation.kernels.levels import LEVEL, LevelParams, levels_evaluate, new_levels_state

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "river"


def _series() -> tuple[np.ndarray, np.ndarray]:
    with open(DATA / "usgs_08211520_00065_2023-04-22_2023-04-28_event.csv") as f:
        rows = list(csv.DictReader(f))
    ts = np.array([int(datetime.fromisoformat(r["timestamp"]).timestamp() * 1000) for r in rows])
    return ts.astype(np.int64), np.array([float(r["value"]) for r in rows])


def _thresholds() -> np.ndarray:
    gauge = json.loads((DATA / "nws_thresholds.json").read_text())["gauges"]["OOST2"][-1]
    keys = ("action stage", "flood stage", "moderate flood stage", "major flood stage")
    return np.array([float(gauge[k]) for k in keys])


def test_transitions_are_the_series_crossings() -> None:
    ts, stage = _series()
    thr = _thresholds()
    assert thr.tolist() == [11.0, 20.0, 20.0, 25.0]
    state = new_levels_state(1)
    tr = levels_evaluate(state, LevelParams(thr[None, :]), np.zeros(len(ts), np.int64), ts, stage)

    # directly: the highest threshold reached at each sample, and where that changes
    reached = np.where(stage[:, None] >= thr[None, :], np.arange(1, 5), 0).max(axis=1)
    change = np.flatnonzero(np.diff(reached)) + 1
    if reached[0] > 0:
        change = np.concatenate([[0], change])
    prev = np.concatenate([[0], reached])[change]

    assert (tr.kind == LEVEL).all()
    assert tr.ts.tolist() == ts[change].tolist()
    assert tr.from_level.tolist() == prev.tolist()
    assert tr.to_level.tolist() == reached[change].tolist()
    assert tr.value.tolist() == stage[change].tolist()

    # and per threshold: upward and downward crossing times
    for j, level in ((0, 1), (1, 3)):
        above = stage >= thr[j]
        up = ts[1:][above[1:] & ~above[:-1]]
        down = ts[1:][~above[1:] & above[:-1]]
        assert tr.ts[(tr.to_level >= level) & (tr.from_level < level)].tolist() == up.tolist()
        assert tr.ts[(tr.from_level >= level) & (tr.to_level < level)].tolist() == down.tolist()
    # the event did reach flood stage (orange, since flood == moderate) and never major
    assert tr.to_level.max() == 3

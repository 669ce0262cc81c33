"""`vigil replay` over the real USGS Oso Creek flood with the NWS stages as levels:
the alerts mark each stage's upward and downward crossings, computed here straight
from the series."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "river"
EVENT = DATA / "usgs_08211520_00065_2023-04-22_2023-04-28_event.csv"
EXAMPLE = ROOT / "rules" / "examples" / "oso_creek"
LEVELS = ("none", "blue", "yellow", "orange", "red")


def _series() -> list[tuple[int, float]]:
    with EVENT.open() as f:
        return [
            (int(datetime.fromisoformat(r["timestamp"]).timestamp() * 1000), float(r["value"]))
            for r in csv.DictReader(f)
        ]


def _stages() -> list[float]:
    doc = json.loads((DATA / "nws_thresholds.json").read_text())
    (gauge,) = [g for g in doc["gauges"].values() if g[0]["usgs id"].lstrip("0") == "8211520"]
    keys = ("action stage", "flood stage", "moderate flood stage", "major flood stage")
    return [float(gauge[-1][k]) for k in keys]


def _expected() -> list[tuple[int, str, str]]:
    """Level = highest stage reached by the reading; up on the reading, down on the
    first reading below (the example's ``step_down: reading``), as the NWS defines them."""
    stages = _stages()
    out, level = [], 0
    for ts, value in _series():
        reached = max((k + 1 for k, s in enumerate(stages) if value >= s), default=0)
        if reached != level:
            out.append((ts, LEVELS[level], LEVELS[reached]))
            level = reached
    return out


@pytest.mark.integration
def test_replay_gives_the_stage_crossings(tmp_path: Path) -> None:
    alerts = tmp_path / "alerts.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "engine.tools.cli", "replay",
         "--rules", str(EXAMPLE / "rules.yaml"), "--stations", str(EXAMPLE / "stations.yaml"),
         "--input", str(EVENT), "--station", "08211520", "--metric", "water_level",
         "--alerts-out", str(alerts), "--metrics-out", str(tmp_path / "windows.csv")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert [(e["at"], e["previous_level"], e["level"]) for e in got] == _expected()
    # The event's flood: it reached flood stage (yellow and orange are both 20 ft).
    assert any(e["level"] == "orange" for e in got)
    assert "576 readings" in run.stderr
    with (tmp_path / "windows.csv").open() as f:
        windows = list(csv.DictReader(f))
    assert len(windows) == 576
    assert max(float(w["value"]) for w in windows) == max(v for _, v in _series())

"""Rolling rain totals: a 3-h window ending every hour, through the processor."""

from __future__ import annotations

from pathlib import Path

import rules
from engine.tools.replay import computed_values, replay
from rules.api import load_ruleset

PACKS = Path(rules.__file__).resolve().parent / "packs"
H = 3_600_000
M = 60_000


def test_rolling_three_hour_total_moves_every_ten_minutes() -> None:
    flood = load_ruleset([PACKS / "flood.yaml"], PACKS / "demo_stations.yaml", "en").ruleset
    # 30 mm/h for 2 h at HZ001, in 5-min reports, then dry.
    readings = [("HZ001", "rainfall", k * 5 * M, 2.5) for k in range(24)]
    readings += [("HZ001", "rainfall", 2 * H + k * 5 * M, 0.0) for k in range(48)]
    rows = [r for r in computed_values(flood, readings) if r.source == "flood.rain_3h"]
    by_end = {r.ts: r.value for r in rows}
    assert by_end[H] == 30.0  # the 3 h ending at 1 h hold the first hour's rain
    assert by_end[2 * H] == 60.0
    assert by_end[3 * H] == 60.0
    assert by_end[3 * H + 10 * M] == 55.0  # the first 10 min have left the window
    assert by_end[5 * H] == 0.0
    assert by_end[H + 10 * M] - by_end[H] == 5.0  # a total every 10 minutes
    events = [e for e in replay(flood, readings) if e.rule_id == "flood.rain_3h"]
    # 55 mm (blue) is first reached by the 3 h ending at 1 h 50 min; cleared below it.
    assert [(e.level, e.at) for e in events][:1] == [("blue", H + 50 * M)]

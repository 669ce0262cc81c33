"""Derived metrics do not depend on how readings are batched (issue 10, item 6).

The dam pack's seepage-pressure residual pairs each pressure reading with the reservoir
level at or before it. Fed the same readings in any split into batches, the engine must
derive the same series and raise the same alerts as from one batch; the real clay-core
dam's daily series (``shared/data/dam``) through ``replay`` with batch size 1 and 10,000
must give the same alerts.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import rules
from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch
from engine.contracts.ruleset import RuleSet
from engine.evaluation.derive.formulas import FormulaDeriver
from engine.evaluation.processor import PartitionProcessor
from engine.tools.replay import END_OF_TIME, replay
from rules.api import load_ruleset

PACKS = Path(rules.__file__).resolve().parent / "packs"
DAM_CSV = (
    Path(__file__).resolve().parents[3]
    / "shared/data/dam/clay_core_dam_piezometers_P01-P20_with_reservoir_H_daily.csv"
)
H = 3_600_000
T0 = 1_719_792_000_000  # 2024-07-01 00:00Z
Reading = tuple[str, str, int, float]
MODEL = {"SK01-P1": (-150.0, 2.1), "SK01-P2": (-170.0, 2.0)}  # demo registry's fields


@pytest.fixture(scope="module")
def dam() -> RuleSet:
    return load_ruleset(
        [PACKS / "dam_seepage.yaml"], PACKS / "demo_dam_stations.yaml", "en"
    ).ruleset


def _split(readings: Sequence[Reading], cuts: list[int]) -> list[Sequence[Reading]]:
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(readings)}), len(readings)]
    return [readings[a:b] for a, b in itertools.pairwise(bounds)]


def _on_derived(ruleset: RuleSet, events: list[AlertEvent]) -> list[str]:
    """The events of the rules on derived metrics (their health series included).

    Series by series, each in its order: the order between series follows the rules'
    sensor indexes, which batching may change, and means nothing. The other rules'
    batching is not this test's: a rule's ``started_at`` within one batch is issue 10's
    item 5. As JSON, where NaN (a silence's value) equals NaN."""
    derived = {d.metric for d in ruleset.derived}
    ours = [e for e in events if e.metric in derived]
    return [e.to_json() for e in sorted(ours, key=lambda e: e.fingerprint)]


#: Every instrument once, before the batches under test, in a batch of its own: a
#: runner that meets a station after its first batch leaves it without thresholds
#: (issue 10, item 1, fixed elsewhere); this keeps that out of these tests.
FIRST = [
    ("SK01", "reservoir_level", T0 - H, 116.0),
    *((p, "seepage_pressure", T0 - H, a + b * 116.0) for p, (a, b) in MODEL.items()),
]


def _events(ruleset: RuleSet, batches: list[Sequence[Reading]]) -> list[str]:
    proc = PartitionProcessor(ruleset, lateness_ms=0)
    events: list[AlertEvent] = []
    for offset, batch in enumerate([FIRST, *batches]):
        events += proc.process(TelemetryBatch.from_rows(batch), offset)
    events += proc.close_windows(END_OF_TIME)
    return _on_derived(ruleset, events)


def _derived(ruleset: RuleSet, batches: list[Sequence[Reading]]) -> list[Reading]:
    deriver = FormulaDeriver(ruleset.derived)
    return [r for b in batches for r in deriver.feed(TelemetryBatch.from_rows(b))]


@st.composite
def dam_days(draw: st.DrawFn) -> list[Reading]:
    """Three days of a reservoir and its two piezometers in event-time order: hourly,
    each instrument a few minutes off the hour (sometimes on the reservoir's minute),
    pressure following the reservoir with a residual that steps up at a drawn hour."""
    step_at = draw(st.integers(0, 71))
    jump = {p: draw(st.sampled_from([0.0, 7.0, 10.0])) for p in MODEL}
    minute = {s: draw(st.integers(0, 3)) for s in ("SK01", *MODEL)}
    out: list[Reading] = []
    for k in range(72):
        level = 116.0 + 2.0 * np.sin(k / 9.0)
        out.append(("SK01", "reservoir_level", T0 + k * H + minute["SK01"] * 60_000, level))
        for p, (a, b) in MODEL.items():
            pressure = a + b * level + (jump[p] if k >= step_at else 0.0) + 0.3 * np.cos(k)
            out.append((p, "seepage_pressure", T0 + k * H + minute[p] * 60_000, pressure))
    out.sort(key=lambda r: r[2])  # stably, as replay orders its input
    return out


@settings(max_examples=40, deadline=None)
@given(readings=dam_days(), data=st.data())
def test_any_batching_derives_and_alerts_as_one_batch(
    dam: RuleSet, readings: list[Reading], data: st.DataObject
) -> None:
    size = data.draw(st.integers(1, len(readings)), label="batch size")
    cuts = data.draw(st.lists(st.integers(1, len(readings) - 1), max_size=12), label="cuts")
    every_size = list(range(size, len(readings), size))
    for batches in (_split(readings, cuts), _split(readings, every_size)):
        assert _derived(dam, batches) == _derived(dam, [readings])
        assert _events(dam, batches) == _events(dam, [readings])


@st.composite
def late_pressures(draw: st.DrawFn) -> list[tuple[Reading, int]]:
    """Reservoir levels in order; pressure readings arriving up to 3 h late, but after
    every level older than them (a level that arrives late is unknowable in time)."""
    arrivals: list[tuple[int, int, Reading]] = []
    n = draw(st.integers(1, 30))
    for k in range(n):
        t = T0 + draw(st.integers(0, 12 * 60)) * 60_000
        arrivals.append((t, draw(st.integers(0, 1000)), ("SK01", "reservoir_level", t, 110.0 + k)))
    for _ in range(draw(st.integers(1, 30))):
        t = T0 + draw(st.integers(0, 12 * 60)) * 60_000
        late = draw(st.integers(0, 180)) * 60_000
        station = draw(st.sampled_from(sorted(MODEL)))
        reading = (station, "seepage_pressure", t, float(draw(st.integers(50, 150))))
        arrivals.append((t + late, draw(st.integers(0, 1000)), reading))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    return [(r, i) for i, (_, _, r) in enumerate(arrivals)]


def _reference(arrived: list[tuple[Reading, int]]) -> list[Reading]:
    """Each pressure reading's residual against the level at or before its time among
    the levels that arrived before it (the latest of equal times)."""
    levels = [(r[2], i, r[3]) for r, i in arrived if r[1] == "reservoir_level"]
    out: list[Reading] = []
    for r, i in arrived:
        if r[1] != "seepage_pressure":
            continue
        known = [(t, j, v) for t, j, v in levels if t <= r[2] and j < i]
        if known:
            a, b = MODEL[r[0]]
            out.append((r[0], "seepage_pressure_residual", r[2], r[3] - (a + b * max(known)[2])))
    return sorted(out)


@settings(max_examples=60, deadline=None)
@given(arrived=late_pressures(), data=st.data())
def test_late_pressure_readings_find_the_level_of_their_time_in_any_batching(
    dam: RuleSet, arrived: list[tuple[Reading, int]], data: st.DataObject
) -> None:
    readings = [r for r, _ in arrived]
    cuts = data.draw(st.lists(st.integers(1, max(1, len(readings) - 1)), max_size=10))
    expected = _reference(arrived)

    def residuals(batches: list[Sequence[Reading]]) -> list[Reading]:
        return sorted(r for r in _derived(dam, batches) if r[1] == "seepage_pressure_residual")

    for batches in ([readings], [[r] for r in readings], _split(readings, cuts)):
        got = residuals(batches)
        assert [r[:3] for r in got] == [r[:3] for r in expected]
        assert [r[3] for r in got] == pytest.approx([r[3] for r in expected])


def _real_dam(tmp_path: Path, names: list[str]) -> tuple[RuleSet, list[Reading]]:
    """The clay-core dam's reservoir level and piezometers ``names``, daily, as dam
    instruments; each piezometer's model fitted to its own series (least squares,
    bands at 2 and 3 standard deviations), as a dam's monitoring-index method does."""
    with DAM_CSV.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    readings: list[Reading] = []
    series: dict[str, list[tuple[float, float]]] = {p: [] for p in names}
    for row in rows:
        ts = int(np.datetime64(row["date"], "ms").astype(np.int64))
        if not row["H_reservoir_rel_m"].strip():
            continue  # a gap in the source: no level to pair the day's pressures with
        level = 100.0 + float(row["H_reservoir_rel_m"])  # relative: on a 100 m datum
        readings.append(("DAM", "reservoir_level", ts, level))
        for p in names:
            if row[p].strip():
                kpa = float(row[p]) * 9.81  # metres of head in the source
                readings.append((f"DAM-{p}", "seepage_pressure", ts, kpa))
                series[p].append((level, kpa))
    stations: list[dict[str, object]] = [
        {"id": "DAM", "kind": "reservoir", "metrics": {"reservoir_level": "m"},
         # The pack is written for hourly reports (its 1-h windows, 7-d flat line); this
         # daily series is replayed against it as it is.
         "report_interval": "1h",
         "flood_limit_level": 130.0, "design_flood_level": 140.0, "check_flood_level": 150.0},
        {"id": "DAM-WE1", "kind": "seepage_weir", "reservoir": "DAM",
         "metrics": {"seepage_flow": "L/s"},  # no data: the pack's weir rules need one
         "fields": {"seepage_warning": 8.0, "seepage_allowable": 12.0, "seepage_daily_rise": 2.0}},
    ]  # fmt: skip
    for p in names:
        x, y = np.array(series[p]).T
        slope, intercept = np.polyfit(x, y, 1)
        sd = float(np.std(y - (intercept + slope * x)))
        stations.append({
            "id": f"DAM-{p}", "kind": "piezometer", "reservoir": "DAM",
            "metrics": {"seepage_pressure": "kPa"}, "sensor_elevation": 50.0,
            "fields": {"piezometric_warning": 500.0, "piezometric_limit": 600.0,
                       "residual_intercept": float(intercept), "residual_slope": float(slope),
                       "residual_2s": 2 * sd, "residual_3s": 3 * sd},
        })  # fmt: skip
    registry = tmp_path / "dam_stations.yaml"
    registry.write_text(yaml.safe_dump({"stations": stations}, allow_unicode=True))
    ruleset = load_ruleset([PACKS / "dam_seepage.yaml"], registry, "en").ruleset
    return ruleset, readings


@pytest.mark.parametrize("piezometer", ["P01", "P12", "P19"])
def test_real_dam_replays_the_same_alerts_one_reading_or_all_at_a_time(
    tmp_path: Path, piezometer: str
) -> None:
    # One piezometer a run: with two, batch size 1 would meet the second after the
    # residual rule's first batch (issue 10, item 1, fixed elsewhere).
    ruleset, readings = _real_dam(tmp_path, [piezometer])
    one = replay(ruleset, readings, batch_size=1)
    many = replay(ruleset, readings, batch_size=10_000)
    residual = [e for e in many if e.rule_id == "dam.seepage_pressure_residual"]
    # The fitted bands are crossed in the real series: the comparison is not empty.
    assert any(e.state == "firing" for e in residual)
    # Not the silence series: readings a day apart against the pack's 3 h ``stale`` are
    # found silent between batches only (silence is checked after each batch), so every
    # day with batch size 1 and seldom in batches of 10,000; that is not the formula's.
    levels = [e for e in one if not e.rule_id.endswith("#silent")]
    assert _on_derived(ruleset, levels) == _on_derived(
        ruleset, [e for e in many if not e.rule_id.endswith("#silent")]
    )

"""The window chain judges each sensor in its own event time: a store-and-forward backlog
raises what the event-time replay of the same readings raises; stations first seen while
the engine runs alert."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rules
from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch
from engine.contracts.ruleset import RuleSet, ThresholdRule
from engine.evaluation.kernels import windows as win
from engine.evaluation.processor import PartitionProcessor
from engine.evaluation.runners.windowed import WindowedRunner
from engine.tools.replay import END_OF_TIME, computed_values, replay
from rules.api import load_ruleset

PACKS = Path(rules.__file__).resolve().parent / "packs"
M = 60_000
H = 60 * M
T0 = 1_700_006_400_000 // (24 * H) * (24 * H)  # a day boundary
Reading = tuple[str, str, int, float]
#: The flood pack's window-chain rules: sliding rain sums and the 1-h rise (delta).
CHAIN = {"flood.rain_1h", "flood.rain_3h", "flood.rain_6h", "flood.rain_24h",
         "flood.river_rise_rate"}  # fmt: skip


def _levels(events: Sequence[AlertEvent], rule_ids: set[str] | None = None) -> list[tuple]:  # type: ignore[type-arg]
    """Level transitions (health events left out: a live gap is a real silence)."""
    return sorted(
        (e.rule_id, e.station, e.previous_level, e.level, e.at, e.started_at, e.value)
        for e in events
        if "health" not in e.labels and (rule_ids is None or e.rule_id in rule_ids)
    )


def _storm() -> tuple[list[Reading], list[Reading]]:
    """Six hours of 5-min reports from three gauges; HZ002 is out of coverage from 2 h to
    4 h, while a storm passes over it (72 mm in an hour, the river up 1.2 m). Returns
    (readings sent live, HZ002's buffered readings)."""
    live: list[Reading] = []
    held: list[Reading] = []
    for k in range(72):
        t = T0 + k * 5 * M
        for station in ("HZ001", "HZ002", "HZ003"):
            storm = station == "HZ002" and 30 <= k < 42
            rise = 0.1 * min(max(k - 30, 0), 12) if station == "HZ002" else 0.0
            rows = [(station, "rainfall", t, 6.0 if storm else 0.5),
                    (station, "water_level", t, 3.0 + rise)]  # fmt: skip
            (held if station == "HZ002" and 24 <= k < 48 else live).extend(rows)
    return live, held


def _run(
    proc: PartitionProcessor, batches: list[list[Reading]], now: list[int], restart: bool = False
) -> list[AlertEvent]:
    """Feed the batches (the gateway's clock at each one's newest reading), then flush.
    ``restart``: a new processor restored from the snapshot after every batch."""
    events: list[AlertEvent] = []
    for offset, rows in enumerate(batches):
        now[0] = max(now[0], max(r[2] for r in rows))
        events += proc.process(TelemetryBatch.from_rows(rows), offset)
        if restart:
            blob = proc.snapshot()
            proc = PartitionProcessor(proc.ruleset, lateness_ms=proc.lateness_ms, clock=proc.clock)
            proc.restore(blob)
    return events + proc.close_windows(END_OF_TIME)


def _rejected(proc: PartitionProcessor) -> list[tuple[str, str, int, float, str]]:
    """Dead letters of the window-chain rules (the early-firing river level rule has its
    own runner)."""
    return [r for r in proc.rejected if any(f"rule {rid}:" in r[4] for rid in CHAIN)]


def _live_batches(live: list[Reading]) -> list[list[Reading]]:
    """One batch per 5-min report time, as a gateway collects them."""
    by_t: dict[int, list[Reading]] = {}
    for r in live:
        by_t.setdefault(r[2], []).append(r)
    return [by_t[t] for t in sorted(by_t)]


def _flood() -> RuleSet:
    return load_ruleset([PACKS / "flood.yaml"], PACKS / "demo_stations.yaml", "en").ruleset


def test_a_two_hour_backlog_in_one_batch_fires_what_the_replay_fires() -> None:
    flood = _flood()
    live, held = _storm()
    want = _levels(replay(flood, live + held), CHAIN)
    assert any(w[1] == "HZ002" and w[0] == "flood.rain_1h" for w in want)  # the storm alerts
    batches = _live_batches(live)
    # HZ002 reconnects at 4 h and uploads its buffer, in order, in one message
    at_4h = next(i for i, b in enumerate(batches) if b[0][2] == T0 + 4 * H)
    batches[at_4h] = held + batches[at_4h]
    now = [T0]
    proc = PartitionProcessor(flood, lateness_ms=M, clock=lambda: now[0])
    got = _levels(_run(proc, batches, now), CHAIN)
    assert got == want
    assert _rejected(proc) == []


@pytest.mark.parametrize("restart", [False, True])
def test_a_backlog_split_over_batches_between_current_readings_fires_the_same(
    restart: bool,
) -> None:
    flood = _flood()
    live, held = _storm()
    want = _levels(replay(flood, live + held), CHAIN)
    batches = _live_batches(live)
    at_4h = next(i for i, b in enumerate(batches) if b[0][2] == T0 + 4 * H)
    # the buffer in chunks of 7 reports (split inside buckets and hours), each after one
    # of the other gauges' current readings
    current = [[r] for r in batches[at_4h] if r[0] != "HZ002"]
    chunks = [held[i : i + 14] for i in range(0, len(held), 14)]
    assert len(chunks) == len(current) == 4
    mixed = [b for pair in zip(current, chunks, strict=True) for b in pair]
    # then HZ002's own current report, after its buffer
    mixed.append([r for r in batches[at_4h] if r[0] == "HZ002"])
    batches[at_4h : at_4h + 1] = mixed
    now = [T0]
    proc = PartitionProcessor(flood, lateness_ms=M, clock=lambda: now[0])
    assert _levels(_run(proc, batches, now, restart), CHAIN) == want
    if not restart:
        assert _rejected(proc) == []


def _sum_rule(stations: tuple[str, ...], **kw: object) -> ThresholdRule:
    thr = np.tile([[10.0, 20.0, 30.0, 40.0]], (len(stations), 1))
    return ThresholdRule("rain", "rainfall", stations, thr, window_ms=H, aggregate="sum", **kw)  # type: ignore[arg-type]


def test_stations_first_seen_one_per_batch_all_alert() -> None:
    stations = tuple(f"G{i:02d}" for i in range(20))
    proc = PartitionProcessor(RuleSet((_sum_rule(stations),)), lateness_ms=0)
    events = []
    for i, station in enumerate(stations):  # one new station per batch, capacity to spare
        rows = [(station, "rainfall", T0 + i * M, 25.0)]
        events += proc.process(TelemetryBatch.from_rows(rows), i)
    events += proc.close_windows(END_OF_TIME)
    assert sorted(e.station for e in events if e.level == "yellow") == list(stations)


def test_a_reading_is_late_only_for_its_own_sensors_closed_window() -> None:
    proc = PartitionProcessor(RuleSet((_sum_rule(("A", "B")),)), lateness_ms=0)
    steps = [
        [("A", 10 * M, 1.0), ("B", 10 * M, 1.0)],
        [("B", 3 * H, 1.0)],  # A is silent: its first hour closes (on 1 mm)
        # A's buffered reading for that hour reopens it; its next hours are on time
        [("A", 59 * M, 25.0), ("A", 90 * M, 25.0), ("A", 150 * M, 1.0)],
        # now A has moved on: a reading for its first hour is late for it
        [("A", 30 * M, 5.0)],
    ]
    events = []
    for offset, rows in enumerate(steps):
        batch = TelemetryBatch.from_rows([(s, "rainfall", t, v) for s, t, v in rows])
        events += proc.process(batch, offset)
    assert proc.rejected == [
        ("A", "rainfall", 30 * M, 5.0, "late for rule rain: its 60-min window closed already")
    ]
    assert proc.accepted("rain", "A") == 4
    events += proc.close_windows(END_OF_TIME)
    assert [(e.station, e.level, e.at, e.value) for e in events][:2] == [
        ("A", "yellow", H, 26.0),
        ("A", "none", 3 * H, 1.0),
    ]


def test_a_partition_clock_snapshot_restores_with_that_clock_for_every_sensor() -> None:
    rule = _sum_rule(("A", "B"))
    proc = PartitionProcessor(RuleSet((rule,)), lateness_ms=0)
    proc.process(TelemetryBatch.from_rows([("A", "rainfall", 10 * M, 15.0)]), 0)
    runner = proc.runner("rain")
    assert isinstance(runner, WindowedRunner)
    saved = runner.snapshot()
    # the format before per-sensor clocks: one clock (the first open window) per partition
    old = {k: v for k, v in saved.items() if k != "windows"}
    old["clock"] = 0
    fresh = WindowedRunner(rule, 0)
    fresh.restore(old)
    assert fresh.windows.clock["next_close"][:1].tolist() == [0]
    raw = fresh.apply(*_arrays(fresh, [("A", 20 * M, 10.0)]), 20 * M, 20 * M)[0]
    raw += fresh.close(END_OF_TIME)
    assert [(t.to_level, t.at, t.value) for t in raw] == [(2, H, 25.0)]
    # and the current format round-trips the sensor's own clock
    again = WindowedRunner(rule, 0)
    again.restore(runner.snapshot())
    assert again.windows.clock[:1].tolist() == runner.windows.clock[:1].tolist()


def _arrays(runner: WindowedRunner, rows: list[tuple[str, int, float]]):  # type: ignore[no-untyped-def]
    lut, _ = runner.sensors.lookup(tuple(r[0] for r in rows))
    return (lut, np.array([r[1] for r in rows], np.int64), np.array([r[2] for r in rows]),
            np.ones(len(rows), np.uint8))  # fmt: skip


# ---- differential: any batching and interleaving of per-sensor in-order readings ----


@st.composite
def arrivals(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    """Per-sensor in-order series with gaps, each delivered with its own delay (a
    backlog), interleaved across sensors in random batches."""
    n = draw(st.integers(2, 4))
    readings: list[Reading] = []
    keys: list[int] = []
    for s in range(n):
        lag = draw(st.sampled_from([0, 0, 3 * H, 8 * H]))  # how far behind it uploads
        t = T0 + draw(st.integers(0, 12)) * 5 * M
        for _ in range(draw(st.integers(1, 40))):
            t += draw(st.sampled_from([M, 5 * M, 5 * M, 10 * M, 25 * M, 2 * H, 5 * H]))
            v = draw(st.sampled_from([0.0, 2.0, 9.0, 15.0, 30.0]))
            readings.append((f"S{s}", "rainfall", t, v))
            keys.append(t + lag)
    ties = draw(st.lists(st.integers(0, 3), min_size=len(keys), max_size=len(keys)))
    order = sorted(range(len(readings)), key=lambda i: (keys[i], ties[i]))
    ordered = [readings[i] for i in order]
    batches, i = [], 0
    while i < len(ordered):
        size = draw(st.integers(1, 30))
        batches.append(ordered[i : i + size])
        i += size
    return readings, batches


def _decisions(events: Sequence[AlertEvent]) -> list[tuple[str, ...]]:
    """Each series' level over event time: its events as the live-equals-replay contract
    compares them (fingerprint, levels, ``at``, ``started_at``), where the events of a
    series at one ``at`` count as one step, from the first's level to the last's (none
    when they are the same).

    Live, a window that the watermark closed while its sensor was silent may raise the
    level on what was known; when the sensor's backlog reopens it, it is decided again,
    at the same time: a raise in two steps (blue, then yellow) where the replay has one,
    or, for an aggregate that can go down (mean, delta), a raise taken back at once."""
    runs: dict[tuple[str, int], list[AlertEvent]] = {}
    for e in events:
        runs.setdefault((e.fingerprint, e.at), []).append(e)
    return sorted(
        (fp, run[0].previous_level, run[-1].level, str(at), str(run[-1].started_at))
        for (fp, at), run in runs.items()
        if run[0].previous_level != run[-1].level
    )


@settings(max_examples=60, deadline=None)
@given(arrivals(), st.sampled_from(["sum", "delta", "mean"]), st.sampled_from([0, 10 * M]),
       st.sampled_from([0, M, 10 * M]))  # fmt: skip
def test_any_batching_and_interleaving_raises_what_the_replay_raises(  # type: ignore[no-untyped-def]
    case, agg, slide, lateness
) -> None:
    """Any lateness: a sensor that falls silent mid-window (for longer than the lateness)
    and then sends its backlog has that window decided on time, then again, as the
    replay decides it; every window's last value is the replay's."""
    readings, batches = case
    stations = tuple(f"S{s}" for s in range(4))
    thr = np.tile([[5.0, 12.0, 25.0, 45.0]], (4, 1))
    rule = ThresholdRule("r", "rainfall", stations, thr, window_ms=H, slide_ms=slide,
                         aggregate=agg, deadband=1.0, for_ms=20 * M)  # fmt: skip
    ruleset = RuleSet((rule,))
    want = replay(ruleset, readings)
    proc = PartitionProcessor(ruleset, lateness_ms=lateness)
    runner = proc.runner("r")
    assert isinstance(runner, WindowedRunner) and runner.spec.aggregate == agg
    runner.closed = []
    got: list[AlertEvent] = []
    for offset, rows in enumerate(batches):
        got += proc.process(TelemetryBatch.from_rows(rows), offset)
    got += proc.close_windows(END_OF_TIME)
    assert _decisions(got) == _decisions(want)
    assert proc.rejected == []
    # every window's last emission is the replay's window
    last = {(runner.sensors.stations[s], end): v for s, end, v in runner.closed}
    windows = {(r.station, r.ts): r.value for r in computed_values(ruleset, readings)}
    assert last.keys() == windows.keys()
    assert all(math.isclose(last[k], v, rel_tol=1e-9, abs_tol=1e-9)
               or (math.isnan(v) and math.isnan(last[k])) for k, v in windows.items())  # fmt: skip
    assert win.END_OF_INPUT == END_OF_TIME


# ---- a gauge silent from the middle of a window, then its backlog ----------------------

#: A 1-h mean of the water level (m), to cover a mean beside the pack's sums and delta.
MEAN = ThresholdRule("level_mean", "water_level", ("HZ001", "HZ002", "HZ003"),
                     np.tile([[3.2, 3.5, 3.9, 4.5]], (3, 1)), window_ms=H, aggregate="mean",
                     deadband=0.05)  # fmt: skip


def _mid_window_outage(silent_from: int, back_at: int) -> tuple[list[Reading], list[Reading]]:
    """Six hours of 5-min reports from three gauges, a storm over HZ002 from 2.5 h to 3.5 h
    (6 mm per report, the river up 0.1 m per report); HZ002 is out of coverage for reports
    ``silent_from .. back_at - 1`` (indices of 5-min steps). Returns (sent live, held)."""
    live: list[Reading] = []
    held: list[Reading] = []
    for k in range(72):
        t = T0 + k * 5 * M
        for station in ("HZ001", "HZ002", "HZ003"):
            storm = station == "HZ002" and 30 <= k < 42
            rise = 0.1 * min(max(k - 30, 0), 12) if station == "HZ002" else 0.0
            rows = [(station, "rainfall", t, 6.0 if storm else 0.5),
                    (station, "water_level", t, 3.0 + rise)]  # fmt: skip
            (held if station == "HZ002" and silent_from <= k < back_at else live).extend(rows)
    return live, held


@pytest.mark.parametrize(
    ("silent_from", "back_at", "chunk"),
    [
        (27, 54, 0),  # from 2:15 (mid-hour: the 1-h delta and mean) to 4:30, one upload
        (37, 50, 0),  # from 3:05 (mid-bucket of the 10-min rain sums) to 4:10
        (37, 50, 6),  # the same, uploaded in chunks of 3 reports between current readings
        (44, 60, 0),  # from 3:40, after the storm: the levels fall while it is silent
    ],
)
def test_a_backlog_after_a_mid_window_silence_raises_what_the_replay_raises(
    silent_from: int, back_at: int, chunk: int
) -> None:
    from tests.differential.compare import compare

    flood = _flood()
    ruleset = RuleSet((*flood.rules, MEAN))
    live, held = _mid_window_outage(silent_from, back_at)
    lateness = 10 * M  # far shorter than the silence: the other gauges move event time on
    batches = _live_batches(live)
    back = next(i for i, b in enumerate(batches) if b[0][2] == T0 + back_at * 5 * M)
    if chunk:
        current = [[r] for r in batches[back] if r[0] != "HZ002"]
        uploads = [held[i : i + chunk] for i in range(0, len(held), chunk)]
        current += [[]] * (len(uploads) - len(current))
        mixed = [b for pair in zip(uploads, current, strict=True) for b in pair if b]
        batches[back : back + 1] = [*mixed, [r for r in batches[back] if r[0] == "HZ002"]]
    else:
        batches[back] = held + batches[back]
    now = [T0]
    proc = PartitionProcessor(ruleset, lateness_ms=lateness, clock=lambda: now[0])
    got = [e for e in _run(proc, batches, now) if "health" not in e.labels]
    rules = {*CHAIN, MEAN.rule_id}
    got = [e for e in got if e.rule_id in rules]
    want = [e for e in replay(ruleset, live + held) if e.rule_id in rules]
    assert {e.rule_id for e in want} >= {"flood.rain_1h", "flood.river_rise_rate", "level_mean"}
    diff = compare(got, want, until=END_OF_TIME)
    assert not diff, diff.report()
    assert _rejected(proc) == [] and [r for r in proc.rejected if MEAN.rule_id in r[4]] == []


@pytest.mark.parametrize("restart", [False, True])
def test_a_window_left_by_a_gap_never_uploaded_is_decided_as_the_replay_decides_it(
    restart: bool,
) -> None:
    """HZ002 falls silent at 3:50, as its levels fall, and never sends what it missed:
    the windows the watermark closed on what it had sent are final once it reports
    again (a lowering waits for that), across restarts from snapshots too."""
    ruleset = RuleSet((*_flood().rules, MEAN))
    live, _ = _mid_window_outage(46, 60)
    now = [T0]
    proc = PartitionProcessor(ruleset, lateness_ms=10 * M, clock=lambda: now[0])
    got = _run(proc, _live_batches(live), now, restart)
    rules = {*CHAIN, MEAN.rule_id}
    want = _levels(replay(ruleset, live), rules)
    # the 1-h rain sum ending 3:50 (on its last reading, 3:45) lowers its level
    assert ("flood.rain_1h", "HZ002", "orange", "yellow", T0 + 230 * M) in [w[:5] for w in want]
    assert _levels(got, rules) == want


@pytest.mark.parametrize("batch_size", [1, 7, 10_000])
@pytest.mark.parametrize("uploaded", [True, False])
def test_replay_does_not_depend_on_its_batch_size(batch_size: int, uploaded: bool) -> None:
    ruleset = RuleSet((*_flood().rules, MEAN))
    live, held = _mid_window_outage(27, 54)
    readings = live + held if uploaded else live
    want = _levels(replay(ruleset, readings, batch_size=10_000))
    assert _levels(replay(ruleset, readings, batch_size=batch_size)) == want

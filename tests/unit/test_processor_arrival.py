"""The live path's arrival patterns against the event-time replay of the same readings.

Each test is a way the live gateway missed or misdated an alert while every batch held
every station (issue 10): stations first seen after the first batch, a store-and-forward
backlog of a gauge whose neighbours are current, two episodes of one gauge in one batch,
a reading out of order within the allowed lateness, a reading stamped years ahead.
"""

from __future__ import annotations

import numpy as np

from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch
from engine.contracts.ruleset import RuleSet, ThresholdRule
from engine.evaluation.processor import PartitionProcessor
from engine.tools.replay import replay

M = 60_000
H = 60 * M
WINDOW = 15 * M
#: Blue, yellow, orange, red (m) for every station.
LEVELS = [3.0, 4.0, 4.5, 5.0]


def _rule(stations: list[str], **kwargs: object) -> ThresholdRule:
    thresholds = np.array([LEVELS] * len(stations), np.float64)
    return ThresholdRule("flood", "water_level", tuple(stations), thresholds,
                         window_ms=WINDOW, **kwargs)  # type: ignore[arg-type]  # fmt: skip


def _key(e: AlertEvent) -> tuple[str, str, str, int, int]:
    return (e.fingerprint, e.previous_level, e.level, e.at, e.started_at)


def _live(
    ruleset: RuleSet, batches: list[list[tuple[str, int, float]]], lateness_ms: int = 60_000
) -> tuple[list[AlertEvent], PartitionProcessor]:
    """Batches in arrival order through one partition's processor, as the live agent
    applies them; windows still open at the end are closed, as ``replay`` closes them."""
    proc = PartitionProcessor(ruleset, lateness_ms=lateness_ms)
    events: list[AlertEvent] = []
    for offset, rows in enumerate(batches):
        batch = TelemetryBatch.from_rows([(s, "water_level", t, v) for s, t, v in rows])
        events += proc.process(batch, offset)
    events += proc.close_windows(2**62)
    return events, proc


def _replayed(ruleset: RuleSet, batches: list[list[tuple[str, int, float]]]) -> list:
    readings = [(s, "water_level", t, v) for rows in batches for s, t, v in rows]
    return sorted(_key(e) for e in replay(ruleset, readings))


def _hydrograph(station: str, start: int, n: int, peak: float) -> list[tuple[str, int, float]]:
    """5-min readings rising from 2 m to ``peak`` and back."""
    half = n // 2
    return [
        (station, start + j * 5 * M, 2.0 + (peak - 2.0) * (1 - abs(j - half) / half))
        for j in range(n)
    ]


def test_stations_first_seen_after_start_alert() -> None:
    """Twenty gauges, each first heard from in a later batch than the one before: every
    one of them escalates (a station indexed while capacity remained kept NaN thresholds
    and never fired)."""
    stations = [f"G{j:02d}" for j in range(20)]
    ruleset = RuleSet((_rule(stations),))
    batches = [_hydrograph(s, j * 10 * M, 48, 5.4) for j, s in enumerate(stations)]
    events, _ = _live(ruleset, batches)
    red = {e.station for e in events if e.level == "red"}
    assert red == set(stations)
    assert sorted(_key(e) for e in events) == _replayed(ruleset, batches)
    # Replay's own batch size no longer matters either.
    readings = [(s, "water_level", t, v) for rows in batches for s, t, v in rows]
    assert sorted(map(_key, replay(ruleset, readings, batch_size=1))) == sorted(
        map(_key, replay(ruleset, readings, batch_size=10_000))
    )


def test_a_backlog_is_evaluated_in_the_gauges_own_event_time() -> None:
    """Gauge B is silent for two hours while A reports, then uploads its buffered two
    hours in order: none of it is late, and its flood fires as the replay's does."""
    ruleset = RuleSet((_rule(["A", "B"]),))
    t0 = 1_719_763_200_000
    a = [("A", t0 + j * 5 * M, 2.0) for j in range(48)]  # four hours, quiet
    b_before = [("B", t0 + j * 5 * M, 2.0) for j in range(6)]
    backlog = _hydrograph("B", t0 + 30 * M, 25, 5.2)  # 30 min .. 2.5 h, held back
    batches = [a[:6] + b_before, a[6:30], backlog, a[30:]]
    events, proc = _live(ruleset, batches)
    assert proc.rejected == []
    assert [e.level for e in events if e.station == "B"][:4] == ["blue", "yellow", "orange", "red"]
    assert sorted(_key(e) for e in events) == _replayed(ruleset, batches)
    # The same backlog as several uploads, each one batch, between A's current readings;
    # an upload ends mid-window, which A's readings then close: the next upload reopens it.
    split = [a[:6] + b_before, a[6:30], backlog[:8], a[30:32], backlog[8:17], backlog[17:], a[32:]]
    events, proc = _live(ruleset, split)
    assert proc.rejected == []
    assert sorted(_key(e) for e in events) == _replayed(ruleset, split)


def test_each_event_carries_its_own_episodes_start() -> None:
    """Two floods of one gauge in one batch: the first episode's events date from the
    first rise, not from the batch's last episode."""
    ruleset = RuleSet((_rule(["A"]),))
    first = _hydrograph("A", 0, 24, 4.2)
    second = _hydrograph("A", 4 * H, 24, 4.2)
    events, _ = _live(ruleset, [first + second])
    starts = {(e.level, e.at): e.started_at for e in events}
    assert len({e.started_at for e in events}) == 2
    assert sorted(_key(e) for e in events) == _replayed(ruleset, [first + second])
    assert all(s <= at for (_, at), s in starts.items())


def test_a_reading_out_of_order_within_the_lateness_is_evaluated() -> None:
    """A 6.9 m reading that arrives a minute after its gauge's next reading: it raises
    red (it was neither counted, nor alerted on, nor dead-lettered)."""
    ruleset = RuleSet((_rule(["A"]),))
    rows = [("A", j * 5 * M, 2.0) for j in range(6)]
    batches = [rows[:2], [rows[3]], [("A", 2 * 5 * M, 6.9)], rows[4:]]
    events, proc = _live(ruleset, batches, lateness_ms=10 * M)
    assert [(e.level, e.at) for e in events if e.level == "red"] == [("red", 10 * M)]
    assert proc.accepted("flood", "A") == 6 and proc.rejected == []
    assert sorted(_key(e) for e in events) == _replayed(ruleset, batches)
    # Five readings after the sixth (minutely, within the allowed lateness): every one
    # is counted, and the one above red raises it at its own time.
    minutely = [("A", j * M, 6.9 if j == 2 else 2.0) for j in range(6)]
    late_five = [[minutely[5]], *([r] for r in minutely[:5])]
    events, proc = _live(ruleset, late_five, lateness_ms=10 * M)
    # Counted: the ones that moved the window's maximum (one that does not cannot be told
    # from a broker's redelivery, and changes nothing); none dead-lettered, none lost.
    assert proc.accepted("flood", "A") == 2 and proc.rejected == []
    assert sorted(_key(e) for e in events) == _replayed(ruleset, late_five)


def test_a_reading_of_a_window_the_gauge_has_left_is_dead_lettered_with_its_reason() -> None:
    ruleset = RuleSet((_rule(["A"], for_ms=10 * M),))
    batches = [[("A", 0, 2.0)], [("A", WINDOW + M, 2.0)], [("A", 5 * M, 4.2)]]
    events, proc = _live(ruleset, batches, lateness_ms=10 * M)
    assert events == []
    assert len(proc.rejected) == 1
    station, _, ts, value, reason = proc.rejected[0]
    assert (station, ts, value) == ("A", 5 * M, 4.2)
    assert "late for rule flood" in reason


def test_a_reading_stamped_years_ahead_does_not_move_event_time() -> None:
    """It fails QC; the other gauges' on-time readings are not then late."""
    now = 1_800_000_000_000
    proc = PartitionProcessor(RuleSet((_rule(["A", "B"]),)), lateness_ms=M, clock=lambda: now)
    proc.process(TelemetryBatch.from_rows([("A", "water_level", now - 20 * M, 2.0)]), 0)
    ahead = now + 10 * 365 * 24 * H
    proc.process(TelemetryBatch.from_rows([("B", "water_level", ahead, 2.0)]), 1)
    assert proc.watermark == now - 20 * M
    events = proc.process(TelemetryBatch.from_rows([("A", "water_level", now - 10 * M, 4.2)]), 2)
    assert proc.rejected == []
    assert [e.level for e in events] == ["yellow"]


def test_a_pollutant_reading_for_an_hour_whose_aqi_is_computed_is_dead_lettered() -> None:
    aqi = ThresholdRule("aqi", "aqi", ("S",), np.array([[100.0, 150.0, 200.0, 300.0]]),
                        window_ms=H, aggregate="last")  # fmt: skip
    proc = PartitionProcessor(RuleSet((aqi,)), lateness_ms=M)
    for offset, (ts, value) in enumerate([(0, 40.0), (H, 45.0), (10 * M, 400.0)]):
        proc.process(TelemetryBatch.from_rows([("S", "pm2_5", ts, value)]), offset)
    assert [r[:4] for r in proc.rejected] == [("S", "pm2_5", 10 * M, 400.0)]
    assert "hourly AQI" in proc.rejected[0][4]


def test_a_redelivered_reading_never_raises_a_cleared_level_again() -> None:
    """A broker's redelivery of the reading that raised red, after the level cleared:
    even within a lateness longer than the window it is late, never a new red."""
    ruleset = RuleSet((_rule(["A"]),))
    batches = [[("A", 0, 5.2)], [("A", WINDOW, 2.0)], [("A", 2 * WINDOW, 2.0)], [("A", 0, 5.2)]]
    events, proc = _live(ruleset, batches, lateness_ms=20 * M)
    assert [(e.previous_level, e.level, e.at) for e in events] == [
        ("none", "red", 0),
        ("red", "none", 2 * WINDOW),
    ]
    assert [r[2] for r in proc.rejected] == [0]

"""A device's hours-long backlog uploaded hour by hour, while its partition's other
gauges are current (NB-IoT coverage back after a gap), with the shipped flood pack's
``stale`` of 1 h.

The device really was silent on the gateway's clock: one silence alert per rule, dated
its last reading before the gap + ``stale``, and one all-clear, when its data is current
again (a reading within ``stale`` of the partition's event time). A chunk still older
than that neither clears the silence nor raises it again. Its levels are the replay's.
"""

from __future__ import annotations

from pathlib import Path

import rules
from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import BatchBuilder
from engine.evaluation.processor import PartitionProcessor
from engine.tools.replay import replay
from rules.api import load_ruleset
from rules.registry import load_registry

PACKS = Path(rules.__file__).resolve().parent / "packs"
M = 60_000
H = 60 * M
STEP = 5 * M
T0 = 1_700_006_400_000 // (24 * H) * (24 * H) + 35 * M  # not on a window boundary
WAVES = {"HZ002": (2.0, 4.3), "HZ003": (1.5, 3.6)}  # the same partition in the gateway


def _wave(station: str) -> list[tuple[int, float]]:
    base, peak = WAVES[station]
    n = 12 * 12
    return [(T0 + i * STEP, round(base + (peak - base) * (1 - abs(2 * i / n - 1)), 3))
            for i in range(n)]  # fmt: skip


def _batch(station: str, rows: list[tuple[int, float]]) -> BatchBuilder:
    b = BatchBuilder()
    for t, v in rows:
        b.add(station, "water_level", t, v)
    return b


def _live() -> tuple[list[AlertEvent], list[AlertEvent]]:
    """(live events, replay events): HZ002 current, then HZ003's 12 h in hourly uploads."""
    ruleset = load_ruleset(
        [str(PACKS / "flood.yaml")], load_registry(PACKS / "demo_stations.yaml")
    ).ruleset
    proc = PartitionProcessor(ruleset, lateness_ms=0, clock=lambda: T0 + 13 * H)
    batches = [_batch("HZ002", _wave("HZ002")[i : i + 12]) for i in range(0, 144, 12)]
    batches += [_batch("HZ003", _wave("HZ003")[i : i + 12]) for i in range(0, 144, 12)]
    live = [e for offset, b in enumerate(batches) for e in proc.process(b.build(), offset)]
    readings = [(s, "water_level", t, v) for s in WAVES for t, v in _wave(s)]
    basin = {r.rule_id for r in ruleset.corroboration}
    return [e for e in live if e.rule_id not in basin], [
        e for e in replay(ruleset, readings) if e.rule_id not in basin
    ]


def test_an_hourly_uploaded_backlog_is_one_silence_and_one_all_clear() -> None:
    live, replayed = _live()
    silences = sorted(
        (e.rule_id, e.station, e.previous_level, e.level, e.at, e.started_at)
        for e in live
        if e.rule_id.endswith("#silent")
    )
    first_upload_last = T0 + 11 * STEP
    # The partition's event time is HZ002's last reading (T0 + 11:55) when the last
    # upload comes: its first reading (T0 + 11:00) is within the hour of it.
    current_again = T0 + 11 * H
    assert silences == sorted(
        (f"{rule}#silent", "HZ003", *change)
        for rule in ("flood.river_level", "flood.river_rise_rate")
        for change in (
            ("none", "blue", first_upload_last + H, first_upload_last),
            ("blue", "none", current_again, first_upload_last),
        )
    )
    # Replay, without a wall clock, raises no silence; every level event is the same.
    assert not [e for e in replayed if e.rule_id.endswith("#silent")]

    def ident(e: AlertEvent) -> tuple[str, str, str, int, int]:
        return (e.fingerprint, e.previous_level, e.level, e.at, e.started_at)

    levels = sorted(ident(e) for e in live if not e.rule_id.endswith("#silent"))
    assert levels == sorted(ident(e) for e in replayed)
    assert len(levels) > 5

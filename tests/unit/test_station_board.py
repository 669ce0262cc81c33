"""The duty room's station board (``engine.runtime.dispatch.board``): checked against a
reading-by-reading reference on generated batches (out of order, duplicates, several
buckets per batch, backlogs older than the span, empty batches)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contracts.batch import TelemetryBatch
from engine.runtime.dispatch.board import StationBoard

BUCKET = 300_000
T0 = 1_719_792_000_000


def reference(batches: list[list[tuple[str, str, int, float]]], points: int) -> dict[str, Any]:
    """The contract reading by reading, in the order received: the newest reading is the
    one with the greatest event time (of equal times, the later); the trace, per bucket,
    likewise, over the ``points`` buckets up to the newest reading's."""
    newest: dict[tuple[str, str], tuple[int, float]] = {}
    buckets: dict[tuple[str, str], dict[int, tuple[int, float]]] = {}
    for rows in batches:
        for station, metric, ts, value in rows:
            sensor = (station, metric)
            if sensor not in newest or ts >= newest[sensor][0]:
                newest[sensor] = (ts, value)
            held = buckets.setdefault(sensor, {}).get(ts // BUCKET)
            if held is None or ts >= held[0]:
                buckets[sensor][ts // BUCKET] = (ts, value)
    traces = {
        sensor: sorted(
            p for b, p in buckets[sensor].items() if b > newest[sensor][0] // BUCKET - points
        )
        for sensor in newest
    }
    return {"newest": newest, "traces": traces}


def seen(board: StationBoard) -> dict[str, Any]:
    newest, traces = {}, {}
    for station, metrics in board.stations.items():
        for metric, r in metrics.items():
            newest[(station, metric)] = (r.ts, r.value)
            traces[(station, metric)] = r.trace(BUCKET)
    return {"newest": newest, "traces": traces}


readings = st.tuples(
    st.sampled_from(["HZ001", "HZ002", "AQ01"]),
    st.sampled_from(["water_level", "pm25"]),
    st.integers(0, 60).map(lambda i: T0 + i * 100_000),  # several readings per bucket
    st.integers(0, 1000).map(lambda v: v / 100),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(readings, max_size=30), max_size=8), st.integers(1, 6))
def test_the_board_agrees_with_the_reading_by_reading_reference(
    batches: list[list[tuple[str, str, int, float]]], points: int
) -> None:
    board = StationBoard(bucket_ms=BUCKET, points=points)
    for rows in batches:
        board.observe(TelemetryBatch.from_rows(rows))
    assert seen(board) == reference(batches, points)


def test_last_reading_keeps_the_newest_and_the_trace_one_point_per_bucket() -> None:
    board = StationBoard(bucket_ms=BUCKET, points=3)
    board.observe(TelemetryBatch.from_rows([
        ("HZ001", "water_level", T0 + 60_000, 4.2),
        ("HZ001", "water_level", T0, 4.0),  # out of order within the batch
        ("HZ001", "water_level", T0 + BUCKET, 4.5),
    ]))  # fmt: skip
    for i in range(2, 5):
        board.observe(TelemetryBatch.from_rows([("HZ001", "water_level", T0 + i * BUCKET, i)]))
    # A backlog's late reading fills in its bucket, still in the span; the last reading
    # stays the newest.
    board.observe(TelemetryBatch.from_rows([("HZ001", "water_level", T0 + 3 * BUCKET + 1, 9)]))
    r = board.of("HZ001")["water_level"]
    assert (r.ts, r.value) == (T0 + 4 * BUCKET, 4.0)
    assert r.trace(BUCKET) == [
        (T0 + 2 * BUCKET, 2.0), (T0 + 3 * BUCKET + 1, 9.0), (T0 + 4 * BUCKET, 4.0),
    ]  # fmt: skip
    assert board.of("HZ002") == {}

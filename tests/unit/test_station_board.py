"""The duty room's station board (``engine.runtime.dispatch.board``): checked against a
reading-by-reading reference on generated batches (out of order, duplicates, several
buckets per batch, ticks), and its ring bounded."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contracts.batch import TelemetryBatch
from engine.runtime.dispatch.board import StationBoard

BUCKET = 300_000
T0 = 1_719_792_000_000


def reference(batches: list[list[tuple[str, str, int, float]]], points: int) -> dict[str, Any]:
    """The contract reading by reading: within a batch in event-time order (stable), a
    reading older than the sensor's newest is ignored, any other is the newest and the
    newest point of its bucket, appended when its bucket is new."""
    newest: dict[tuple[str, str], tuple[int, float]] = {}
    traces: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for rows in batches:
        for station, metric, ts, value in sorted(rows, key=lambda r: r[2]):
            sensor = (station, metric)
            if sensor in newest and ts < newest[sensor][0]:
                continue
            newest[sensor] = (ts, value)
            trace = traces.setdefault(sensor, [])
            if trace and trace[-1][0] // BUCKET == ts // BUCKET:
                trace[-1] = (ts, value)
            else:
                trace.append((ts, value))
            del trace[:-points]
    return {"newest": newest, "traces": traces}


def seen(board: StationBoard) -> dict[str, Any]:
    newest, traces = {}, {}
    for station, metrics in board.stations.items():
        for metric, r in metrics.items():
            newest[(station, metric)] = (r.ts, r.value)
            traces[(station, metric)] = list(r.trace)
    return {"newest": newest, "traces": traces}


readings = st.tuples(
    st.sampled_from(["HZ001", "HZ002", "AQ01"]),
    st.sampled_from(["water_level", "pm25"]),
    st.integers(0, 40).map(lambda i: T0 + i * 100_000),  # several readings per bucket
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


def test_last_reading_keeps_the_newest_and_the_ring_one_point_per_bucket() -> None:
    board = StationBoard(bucket_ms=BUCKET, points=3)
    board.observe(TelemetryBatch.from_rows([
        ("HZ001", "water_level", T0 + 60_000, 4.2),
        ("HZ001", "water_level", T0, 4.0),  # out of order within the batch
        ("HZ001", "water_level", T0 + BUCKET, 4.5),
    ]))  # fmt: skip
    board.observe(TelemetryBatch.from_rows([("HZ001", "water_level", T0 + 10, 9.9)]))  # late
    for i in range(2, 5):
        board.observe(TelemetryBatch.from_rows([("HZ001", "water_level", T0 + i * BUCKET, i)]))
    r = board.of("HZ001")["water_level"]
    assert (r.ts, r.value) == (T0 + 4 * BUCKET, 4.0)
    assert list(r.trace) == [(T0 + i * BUCKET, float(i)) for i in (2, 3, 4)]
    assert board.of("HZ002") == {}

"""The duty room's station board (``engine.runtime.dispatch.board``): checked against a
reading-by-reading reference on generated batches (out of order, duplicates, several
buckets per batch, backlogs older than the span, empty batches), and read back from a
real telemetry log at a restart (committed or not, older than the bound or not, ticks
and undecodable records among them)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contracts.batch import TelemetryBatch, Tick
from engine.runtime.dispatch.board import RESTORE_SLACK_MS, StationBoard, read_back
from engine.runtime.transport.log import Append, DurableLog

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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(readings, max_size=30), max_size=8), st.data())
def test_a_board_that_takes_an_earlier_one_is_the_board_fed_both_in_order(
    batches: list[list[tuple[str, str, int, float]]], data: st.DataObject
) -> None:
    """``take_earlier``: a Kafka worker's read-back, fed into a board of its own while the
    live board takes the readings that came after it, then merged in: the board fed all
    the readings in the order received (equal times included: the later one wins)."""
    points = data.draw(st.integers(1, 6), "points")
    split = data.draw(st.integers(0, len(batches)), "batches read back")
    earlier = StationBoard(bucket_ms=BUCKET, points=points)
    live = StationBoard(bucket_ms=BUCKET, points=points)
    for rows in batches[:split]:
        earlier.observe(TelemetryBatch.from_rows(rows))
    for rows in batches[split:]:
        live.observe(TelemetryBatch.from_rows(rows))
    version = live.version
    live.take_earlier(earlier)
    assert seen(live) == reference(batches, points)
    assert live.version == version + (1 if earlier.stations else 0)


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


# ---- read back from the telemetry log at a restart -------------------------------------

TOPIC, GROUP = "vigil-test-telemetry", "vigil-test"
#: Each station's telemetry partition (a station's readings are all in one).
PARTITION = {"HZ001": 0, "AQ01": 0, "HZ002": 1}
NOW = 1_800_000_000_000  # the restart's wall clock (ms)
GARBAGE = b"\x93not a batch"  # live, it went to the dead letters


def records_of(items: list[Any]) -> list[tuple[int, bytes, list[Any]]]:
    """(partition, record value, its readings) in append order: a list of readings is
    split by partition (as the micro-batcher writes them), ``"tick"`` and ``"garbage"``
    are a tick and an undecodable record."""
    out: list[tuple[int, bytes, list[Any]]] = []
    for item in items:
        if item == "tick":
            out.append((1, TelemetryBatch.of_tick(Tick(NOW, 5000)).encode(), []))
        elif item == "garbage":
            out.append((0, GARBAGE, []))
        else:
            for p in (0, 1):
                rows = [r for r in item if PARTITION[r[0]] == p]
                if rows:
                    out.append((p, TelemetryBatch.from_rows(rows).encode(), rows))
    return out


def logged(path: str, records: list[tuple[int, bytes, list[Any]]], times: list[int]) -> DurableLog:
    log = DurableLog(path)
    log.create_topic(TOPIC, 2)
    for (p, value, _rows), t in zip(records, times, strict=True):
        log.append([Append(TOPIC, p, None, value, t)])
    return log


#: Few event times: readings of equal time in different records are common, and the
#: later received must win also when the read-back merges them.
crowded = st.tuples(
    st.sampled_from(["HZ001", "HZ002", "AQ01"]),
    st.sampled_from(["water_level", "pm25"]),
    st.integers(0, 8).map(lambda i: T0 + i * 150_000),
    st.integers(0, 1000).map(lambda v: v / 100),
)
batch = st.lists(crowded, min_size=1, max_size=12)
items = st.lists(st.one_of(batch, batch, batch, st.sampled_from(["tick", "garbage"])), max_size=10)


@settings(max_examples=100, deadline=None)
@given(items, st.data(), st.integers(1, 4), st.integers(1, 4))
def test_a_board_read_back_and_fed_the_replay_is_the_board_fed_the_same_readings(
    items: list[Any], data: st.DataObject, points: int, page: int
) -> None:
    """The records appended since the bound that the group committed, read back (in
    pages of ``page`` records merged), then the uncommitted ones fed as the topology
    replays them: the reference board of the readings appended since the bound."""
    records = records_of(items)
    since = NOW - points * BUCKET - RESTORE_SLACK_MS
    committed = data.draw(st.integers(0, len(records)), "records committed")
    old = data.draw(st.integers(0, committed), "records appended before the bound")
    times = [since - old + i for i in range(old)] + [since + i for i in range(len(records) - old)]
    # Offsets per partition, and each partition's committed offset (never: None).
    offsets, counts = [], [0, 0]
    for p, _, _ in records:
        offsets.append(counts[p])
        counts[p] += 1
    ends = {p: sum(1 for r in records[:committed] if r[0] == p) for p in (0, 1)}
    never = data.draw(st.sampled_from([None, 0, 1]), "partition never committed")
    with tempfile.TemporaryDirectory() as tmp:
        log = logged(tmp, records, times)
        try:
            for p in (0, 1):
                if p != never:
                    log.commit(GROUP, {(TOPIC, p): ends[p]})
            board = StationBoard(bucket_ms=BUCKET, points=points)
            for batch in read_back(log, TOPIC, GROUP, since, page=page):
                board.observe(batch)
        finally:
            log.close()
    done = [i for i, (p, _, _) in enumerate(records) if p != never and offsets[i] < ends[p]]
    taken = [records[i][2] for i in done if times[i] >= since]
    assert seen(board) == reference(taken, points)
    # The topology's replay: every record from its partition's committed offset on.
    replayed = [i for i in range(len(records)) if i not in done]
    for i in replayed:
        if records[i][1] != GARBAGE:
            board.observe(TelemetryBatch.decode(records[i][1]))
    assert seen(board) == reference(taken + [records[i][2] for i in replayed], points)


def test_read_back_takes_the_trace_span_and_the_slack_of_wall_time(tmp_path: Path) -> None:
    """``StationBoard.read_back`` from ``now - span - RESTORE_SLACK_MS``: the record
    appended a millisecond before is not read, the one at the bound is, and so is the
    rest up to the committed offset, not beyond; every batch with readings moves the
    version, a tick does not."""
    board = StationBoard(bucket_ms=BUCKET, points=3)
    bound = NOW - 3 * BUCKET - RESTORE_SLACK_MS
    rows = [("HZ001", "water_level", T0 + i * BUCKET, float(i)) for i in range(5)]
    records = records_of([[rows[0]], [rows[1]], "tick", [rows[2]], [rows[3]], [rows[4]]])
    log = logged(str(tmp_path), records, [bound - 1, bound, bound, bound + 1, NOW, NOW])
    try:
        log.commit(GROUP, {(TOPIC, 0): 4, (TOPIC, 1): 1})  # the tick is partition 1's
        assert board.read_back(log, TOPIC, GROUP, NOW) == 3
    finally:
        log.close()
    r = board.of("HZ001")["water_level"]
    assert (r.ts, r.value) == (T0 + 3 * BUCKET, 3.0)
    assert r.trace(BUCKET) == [(T0 + i * BUCKET, float(i)) for i in (1, 2, 3)]
    assert board.version == 1  # the readings of one page, merged into one batch

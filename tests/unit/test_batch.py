from __future__ import annotations

import msgpack
import numpy as np
import pytest

from engine.contracts.batch import BatchDecodeError, Quality, TelemetryBatch, Tick


def test_round_trip_keeps_every_column() -> None:
    rows = [
        ("S1", "water_level", 1000, 1.5),
        ("S2", "rainfall", 2000, 0.2),
        ("S1", "rainfall", 3000, 0.0),
    ]
    batch = TelemetryBatch.decode(TelemetryBatch.from_rows(rows).encode())
    assert [r[:4] for r in batch.rows()] == rows
    assert batch.stations == ("S1", "S2") and batch.metrics == ("water_level", "rainfall")
    assert batch.ts.dtype == np.dtype("<i8") and batch.value.dtype == np.dtype("<f8")
    assert set(batch.quality.tolist()) == {Quality.UNCHECKED}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb({"v": 2}), "not a version 1 telemetry batch"),
        (msgpack.packb({"v": 1, "stations": []}), "bad batch column"),
    ],
)
def test_decode_rejects_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BatchDecodeError, match=reason):
        TelemetryBatch.decode(data)


def test_decode_rejects_out_of_range_index() -> None:
    good = msgpack.unpackb(TelemetryBatch.from_rows([("S", "m", 1, 1.0)]).encode())
    good["si"] = np.array([5], "<u4").tobytes()
    with pytest.raises(BatchDecodeError, match="station index out of range"):
        TelemetryBatch.decode(msgpack.packb(good))


def test_decode_rejects_ragged_columns() -> None:
    good = msgpack.unpackb(TelemetryBatch.from_rows([("S", "m", 1, 1.0)]).encode())
    good["value"] = np.array([1.0, 2.0], "<f8").tobytes()
    with pytest.raises(BatchDecodeError, match="column 'value' has 2 rows, ts has 1"):
        TelemetryBatch.decode(msgpack.packb(good))


def test_a_tick_round_trips_and_carries_no_readings() -> None:
    tick = TelemetryBatch.decode(TelemetryBatch.of_tick(Tick(1_790_000_000_000, 5000)).encode())
    assert tick.tick == Tick(1_790_000_000_000, 5000) and len(tick) == 0
    # A batch of readings has no tick, and its bytes are what they were before ticks.
    batch = TelemetryBatch.from_rows([("S", "m", 1, 1.0)])
    assert TelemetryBatch.decode(batch.encode()).tick is None
    assert "tick" not in msgpack.unpackb(batch.encode())


@pytest.mark.parametrize(
    ("tick", "reason"),
    [
        ([1, 0], r"bad tick: expected \[wall_ms, every_ms > 0\], got \[1, 0\]"),
        ("now", "bad tick: expected .* got 'now'"),
        ([1.5, 5000], "bad tick"),
    ],
)
def test_decode_rejects_a_bad_tick(tick: object, reason: str) -> None:
    record = msgpack.unpackb(TelemetryBatch.of_tick(Tick(1, 5000)).encode())
    record["tick"] = tick
    with pytest.raises(BatchDecodeError, match=reason):
        TelemetryBatch.decode(msgpack.packb(record))


def test_decode_rejects_a_tick_with_readings() -> None:
    record = msgpack.unpackb(TelemetryBatch.from_rows([("S", "m", 1, 1.0)]).encode())
    record["tick"] = [1, 5000]
    with pytest.raises(BatchDecodeError, match="a tick carries no readings, this one has 1"):
        TelemetryBatch.decode(msgpack.packb(record))

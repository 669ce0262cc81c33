"""The columnar split of readings into partition batches (``engine.runtime.batching``)
against the plain reference it replaced: a ``BatchBuilder`` per partition fed one
reading at a time. The encoded batches must be the same bytes, partition by partition
and in the same partition order, for tuples of 4 and 5, blocks (empty ones too), and
any mix of them."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.contracts.batch import BatchBuilder, Quality, ReadingBlock
from engine.runtime import batching
from engine.runtime.batching import (
    Reading,
    StationPartitions,
    batches_by_partition,
    murmur2_partition,
)

PARTITIONS = list(range(6))


def part(station: str) -> int:
    return murmur2_partition(station, PARTITIONS)


def reference(
    readings: Sequence[Reading | ReadingBlock], partition_of: Callable[[str], int]
) -> dict[int, bytes]:
    """``Topology.produce``'s loop before the columnar split: a step per reading."""
    builders: dict[int, BatchBuilder] = {}
    for reading in readings:
        station = reading.station if isinstance(reading, ReadingBlock) else reading[0]
        builder = builders.setdefault(partition_of(station), BatchBuilder())
        if isinstance(reading, ReadingBlock):
            builder.add_block(reading)
        else:
            builder.add(*reading)
    return {p: b.build().encode() for p, b in builders.items()}


def columnar(readings: Sequence[Reading | ReadingBlock]) -> dict[int, bytes]:
    return {p: b.encode() for p, b in batches_by_partition(readings, part).items()}


def assert_same(readings: Sequence[Reading | ReadingBlock]) -> None:
    got, want = columnar(readings), reference(readings, part)
    assert list(got) == list(want)  # the partitions, in the same order
    assert got == want


stations = st.sampled_from([f"S{i:03d}" for i in range(40)])
metrics = st.sampled_from(["level", "rain", "flow", "pm25", "no2"])
times = st.integers(-(2**40), 2**45)
values = st.floats(allow_nan=True, allow_infinity=True)
qualities = st.sampled_from(list(Quality))
four = st.tuples(stations, metrics, times, values)
five = st.tuples(stations, metrics, times, values, qualities)
block = st.integers(0, 6).flatmap(
    lambda n: st.builds(
        ReadingBlock,
        stations,
        metrics,
        st.lists(times, min_size=n, max_size=n),
        st.lists(values, min_size=n, max_size=n),
    )
)


@given(st.lists(four, max_size=60))
def test_tuples_of_four(readings: list[Reading]) -> None:
    assert_same(readings)


@given(st.lists(five, max_size=60))
def test_tuples_of_five(readings: list[Reading]) -> None:
    assert_same(readings)


@given(st.lists(block, max_size=20))
def test_blocks(readings: list[ReadingBlock]) -> None:
    assert_same(readings)


@given(st.lists(st.one_of(four, five, block), max_size=40))
def test_any_mix(readings: list[Reading | ReadingBlock]) -> None:
    assert_same(readings)


def test_a_large_batch_of_many_stations() -> None:
    """The NB-IoT shape: 20,000 tuples of 2,000 stations, interleaved."""
    rng = random.Random(7)
    readings: list[Reading] = [
        (f"NB{rng.randrange(2000):05d}", rng.choice(["level", "battery", "rssi"]), i, rng.random())
        for i in range(20_000)
    ]
    assert_same(readings)
    assert sum(len(b) for b in batches_by_partition(readings, part).values()) == 20_000


def test_partition_of_is_asked_once_per_station() -> None:
    asked: list[str] = []

    def counting(station: str) -> int:
        asked.append(station)
        return part(station)

    readings: list[Reading] = [(f"S{i % 3}", "level", i, 1.0) for i in range(300)]
    batches_by_partition(readings, counting)
    assert asked == ["S0", "S1", "S2"]


def test_station_partitions_are_murmur2_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached partition is Kafka's murmur2 one, before and after the cache starts
    over; the cache never holds more than its bound (ids that keep changing)."""
    monkeypatch.setattr(batching, "PARTITION_CACHE_MAX", 50)
    of = StationPartitions(len(PARTITIONS))
    for i in range(500):
        station = f"D{i:04d}"
        assert of(station) == part(station)
        assert len(of._of) <= 50
    assert of("D0001") == part("D0001")  # asked again after the cache started over

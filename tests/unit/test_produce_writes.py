"""What the topology sends together is one durable write on the embedded log (issue 10).

Faust's ``topic.send`` yields to the event loop, and the local transport joins into one
fsynced write only the sends of one loop turn: a batch of readings of N partitions was
written partition by partition (the first alone, the rest as the first's fsync ended),
and the ingest's acknowledgement (the MQTT PUBACK) waited on each of those writes in
turn; so did a tick to each partition and the watermarks due. Handed to the producer in
one turn, they share one write, and the caller still returns only once all are durable.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.contracts.alerts import INGESTED_HEADER, AlertEvent, Level, fingerprint, watermark_of
from engine.contracts.batch import ReadingBlock, TelemetryBatch
from engine.contracts.dead_letters import REASON_HEADER
from engine.contracts.ruleset import CorroborationRule, RuleSet
from engine.evaluation.processor import NO_TIME
from engine.runtime.corroboration.wire import RS, SEP
from engine.runtime.topology import Topology
from engine.runtime.transport.log import Append, DurableLog

PARTITIONS = 8


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[list[Append]]:
    """The records of each write to the durable log, in order."""
    seen: list[list[Append]] = []
    append = DurableLog.append

    def counting(self: DurableLog, records: list[Append]) -> list[int]:
        seen.append(list(records))
        return append(self, records)

    monkeypatch.setattr(DurableLog, "append", counting)
    return seen


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    yield Topology(
        app_id="writes",
        broker=f"local://{tmp_path / 'data'}",
        partitions=PARTITIONS,
        ruleset=RuleSet(rules=()),
        sinks=[],
        data_dir=tmp_path / "data",
        tick_interval_s=60.0,
    )
    log = DurableLog.shared(tmp_path / "data")
    log.release()


def alert(station: str, level: str = "red", previous: str = "none") -> AlertEvent:
    return AlertEvent(
        fingerprint("flood", station, "level"), "flood", station, "level", level, previous,
        "firing", 1_000, 1_000, 7.0, 6.0, "",
    )  # fmt: skip


def run(topology: Topology, step: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        await topology.app.maybe_start_producer()
        try:
            await step()
        finally:
            await topology.app.producer.stop()

    asyncio.run(main())


def of_topic(writes: list[list[Append]], topic: str) -> list[list[Append]]:
    return [[r for r in w if r.topic == topic] for w in writes if any(r.topic == topic for r in w)]


def test_a_batch_across_partitions_is_one_write(
    topology: Topology, writes: list[list[Append]], tmp_path: Path
) -> None:
    stations = [f"S{i:03d}" for i in range(64)]
    readings = [ReadingBlock(s, "level", [1_000, 2_000], [1.0, 2.0]) for s in stations]
    want = {topology.partition_for(s) for s in stations}
    assert len(want) == PARTITIONS  # the batch really spans every partition
    run(topology, lambda: topology.produce(readings))
    telemetry = of_topic(writes, "writes-telemetry")
    assert len(telemetry) == 1  # one write, all the partitions' batches
    assert sorted(r.partition for r in telemetry[0]) == sorted(want)
    assert topology.counters["readings_produced"] == 2 * len(stations)
    # Durable when produce returned: every reading is in the log.
    log = DurableLog.shared(tmp_path / "data")
    try:
        got = sorted(
            row
            for p in range(PARTITIONS)
            for record in log.read("writes-telemetry", p, 0, 10)
            for row in TelemetryBatch.decode(record.value or b"").rows()
        )
    finally:
        log.release()
    assert got == sorted(
        (s, "level", t, v, 0) for s in stations for t, v in ((1_000, 1.0), (2_000, 2.0))
    )


def test_a_tick_to_every_partition_is_one_write(
    topology: Topology, writes: list[list[Append]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(topology, "_owned_telemetry", lambda: set(range(PARTITIONS)))
    run(topology, topology._tick)
    telemetry = of_topic(writes, "writes-telemetry")
    assert len(telemetry) == 1
    assert sorted(r.partition for r in telemetry[0]) == list(range(PARTITIONS))
    assert topology.counters["ticks_written"] == PARTITIONS
    assert topology._ticks_written == dict.fromkeys(range(PARTITIONS), 0)


def test_the_watermarks_due_are_one_write(
    topology: Topology, writes: list[list[Append]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for p in range(PARTITIONS):
        topology._marks.hold(p, 1_000 + p)
        topology.processors[p] = object()  # type: ignore[assignment]  # owned here
    monkeypatch.setattr(topology._marks, "to_send", lambda p, w, piggyback: w)
    run(topology, topology._send_due_marks)
    alerts = of_topic(writes, "writes-alerts")
    assert len(alerts) == 1
    assert sorted((r.partition, watermark_of(dict(r.headers))) for r in alerts[0]) == [
        (p, 1_000 + p) for p in range(PARTITIONS)
    ]
    assert topology._marks.due() == {}  # all sent


def test_a_batchs_dead_letters_and_alerts_are_one_write(
    topology: Topology, writes: list[list[Append]]
) -> None:
    """``_apply``: what a telemetry batch's evaluation writes, written together (its
    dead letters were a write before its alerts)."""
    alerts = [alert(f"S{i}") for i in range(3)]
    rejected = [(f"S{i}", "level", 500, 1.0, "late for rule flood") for i in range(4)]
    proc = types.SimpleNamespace(
        process=lambda batch, offset: alerts, rejected=list(rejected), watermark=NO_TIME
    )
    message = types.SimpleNamespace(partition=5, offset=42, timestamp=1_700_000_000.0)
    batch = TelemetryBatch.from_rows([("S0", "level", 1_000, 7.0)])
    run(topology, lambda: topology._apply(proc, batch, message))  # type: ignore[arg-type]
    assert len(writes) == 1
    (write,) = writes
    assert [r.topic for r in write] == ["writes-dead-letter"] * 4 + ["writes-alerts"]
    assert [dict(r.headers)[REASON_HEADER] for r in write[:4]] == [b"late for rule flood"] * 4
    record = write[4]
    assert record.partition == 5
    assert [AlertEvent.from_json(line) for line in (record.value or b"").split(b"\n")] == alerts
    assert dict(record.headers) == {INGESTED_HEADER: b"1700000000000"}
    assert topology.counters["dead_letter"] == 4
    assert proc.rejected == []


def test_an_alerts_records_routed_events_are_one_write(
    topology: Topology, writes: list[list[Append]]
) -> None:
    """``CorroborationStage.route``: the events of one alerts record, routed to the
    corroboration partitions of their basins, were a write per partition."""
    groups = {f"basin{i}": (f"S{i}",) for i in range(24)}
    rule = CorroborationRule(
        rule_id="basins", source_rule="flood", min_level=Level.ORANGE, k=1, groups=groups,
        within_ms=3_600_000, level=Level.RED, for_ms=0, summary="", resolved_summary="",
    )  # fmt: skip
    topology.swap_rules(RuleSet(rules=(), corroboration=(rule,)))
    want = {topology.partition_for(f"basins{SEP}{g}") for g in groups}
    assert len(want) > 4  # the events really go to several partitions
    stage = topology.corroboration

    async def route() -> None:
        await stage.route([alert(f"S{i}") for i in range(24)])
        await stage.flush()

    run(topology, route)
    routed = of_topic(writes, "writes-corroboration")
    assert len(routed) == 1
    assert {r.partition for r in routed[0]} == want
    lines = [line for r in routed[0] for line in (r.value or b"").split(b"\n")]
    assert sorted(line.split(RS.encode())[0] for line in lines) == sorted(
        f"basins{SEP}{g}".encode() for g in groups
    )

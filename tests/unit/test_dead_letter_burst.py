"""A batch's dead letters share one durable write on the embedded log (issues 10 and 13).

Faust's ``topic.send`` yields to the event loop, and the local transport joins into one
fsynced write only the sends of one loop turn, so dead letters sent through it were
written one by one: 10,000 late readings cost 10,000 fsyncs (28 s on the shared CI
disk), 100,000 about five minutes, while the late readings' dead letters trickled in.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from engine.contracts.dead_letters import REASON_HEADER, RECEIVED_AT_HEADER, SOURCE_HEADER
from engine.contracts.ruleset import RuleSet
from engine.runtime.topology import Topology
from engine.runtime.transport.log import Append, DurableLog

N = 1_000


def test_a_batch_of_dead_letters_is_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[list[str]] = []  # the topics of each write's records
    append = DurableLog.append

    def counting(self: DurableLog, records: list[Append]) -> list[int]:
        writes.append([r.topic for r in records])
        return append(self, records)

    monkeypatch.setattr(DurableLog, "append", counting)
    topology = Topology(
        app_id="burst",
        broker=f"local://{tmp_path / 'data'}",
        partitions=2,
        ruleset=RuleSet(rules=()),
        sinks=[],
        data_dir=tmp_path / "data",
    )
    items = [
        (
            json.dumps({"station": "HZ003", "ts": i}).encode(),
            "late for rule test.level",
            "HZ003/water_level",
            {"station": "HZ003"},
        )
        for i in range(N)
    ]

    async def burst() -> None:
        await topology.app.maybe_start_producer()
        await topology.send_dead_letters(items, quiet=True)
        await topology.app.producer.stop()

    asyncio.run(burst())
    topic = "burst-dead-letter"
    assert [w for w in writes if topic in w] == [[topic] * N]  # one write, all of them
    assert topology.counters["dead_letter"] == N
    log = DurableLog.shared(tmp_path / "data")
    try:
        records = log.read(topic, 0, 0, N + 1)
    finally:
        log.release()
    assert [json.loads(r.value or b"")["ts"] for r in records] == list(range(N))
    headers = dict(records[-1].headers)
    assert headers[REASON_HEADER] == b"late for rule test.level"
    assert headers[SOURCE_HEADER] == b"HZ003/water_level"
    assert int(headers[RECEIVED_AT_HEADER]) > 0
    assert records[-1].key == b"HZ003/water_level"

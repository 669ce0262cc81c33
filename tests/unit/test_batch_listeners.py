"""A batch listener (the console's station board, display only) that raises does not
stop the batch: its alerts are still written, the next listener still hears it, and the
failure is logged once a minute per listener, not per batch. Raised out of ``_apply``, it
stopped the agent, and the replay met it again: a crash loop, and no alerts."""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch
from engine.contracts.ruleset import RuleSet
from engine.evaluation.processor import NO_TIME
from engine.runtime.topology import Topology
from engine.runtime.transport.log import DurableLog
from tests.unit.test_produce_writes import alert, run


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    yield Topology(
        app_id="listeners",
        broker=f"local://{tmp_path / 'data'}",
        partitions=2,
        ruleset=RuleSet(rules=()),
        sinks=[],
        data_dir=tmp_path / "data",
    )
    DurableLog.shared(tmp_path / "data").release()


def test_a_raising_listener_does_not_stop_the_batchs_alerts(
    topology: Topology, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alerts = [alert("S1"), alert("S2")]
    proc = types.SimpleNamespace(
        process=lambda batch, offset: alerts, rejected=[], watermark=NO_TIME
    )
    heard: list[TelemetryBatch] = []

    def broken(batch: TelemetryBatch) -> None:
        raise RuntimeError("board bug")

    topology.batch_listeners[:] = [broken, heard.append]
    batches = [TelemetryBatch.from_rows([("S1", "level", 1_000 + i, 7.0)]) for i in range(2)]

    async def apply_both() -> None:
        for offset, batch in enumerate(batches):
            message = types.SimpleNamespace(partition=1, offset=offset, timestamp=1_700_000_000.0)
            await topology._apply(proc, batch, message)  # type: ignore[arg-type]

    with caplog.at_level(logging.ERROR, logger="engine.runtime.topology"):
        run(topology, apply_both)
    assert heard == batches  # the next listener heard every batch
    assert topology.counters["readings_evaluated"] == 2
    log = DurableLog.shared(tmp_path / "data")
    try:
        written = [
            AlertEvent.from_json(line)
            for record in log.read("listeners-alerts", 1, 0, 10)
            for line in (record.value or b"").split(b"\n")
        ]
    finally:
        log.release()
    assert written == alerts + alerts  # both batches' alerts are durable
    failures = [r for r in caplog.records if "batch listener" in r.getMessage()]
    assert len(failures) == 1  # logged once, not once per batch
    assert failures[0].exc_info is not None and "board bug" in str(failures[0].exc_info[1])

"""``CheckpointingConsumer``: what the checkpointer holds back is committed later.

Faust takes a commit's acknowledgements off its books before the commit and records the
offsets it passes on as committed. A telemetry offset the checkpointer clamps (a
partition mid-batch) or a round postponed (the broker away) must go back on the books:
else the last records of a partition, with nothing after them, are never committed.
No broker: Faust's own bookkeeping runs, the client's commit is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import SimpleNamespace

import faust
import pytest
from aiokafka.errors import KafkaConnectionError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from engine.runtime.kafka.checkpoints import CheckpointingConsumer, CheckpointingTransport

TOPIC = "vigil-telemetry"
PART = TP(TOPIC, 3)


def _consumer(
    monkeypatch: pytest.MonkeyPatch, commits: list[dict[TP, int]]
) -> CheckpointingConsumer:
    app = faust.App("checkpoint-commit-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    transport = CheckpointingTransport(app.conf.broker_consumer, app)
    transport.contiguous_topics = frozenset({TOPIC})
    app.transport = transport

    async def flush() -> None:
        pass

    app._producer = SimpleNamespace(flush=flush)  # nothing buffered to flush

    async def commit(self: object, offsets: Mapping[TP, int]) -> bool:
        commits.append(dict(offsets))
        return True

    async def nothing(*args: object, **kwargs: object) -> None:
        pass

    monkeypatch.setattr(faust_aiokafka.Consumer, "_commit", commit)
    monkeypatch.setattr(faust_aiokafka.Consumer, "assignment", lambda self: {PART})
    consumer = transport.create_consumer(
        callback=nothing, on_partitions_revoked=nothing, on_partitions_assigned=nothing
    )
    assert isinstance(consumer, CheckpointingConsumer)
    consumer._committed_offset[PART] = 10
    for offset in range(10, 15):  # five records processed and acknowledged
        consumer._acked[PART].append(offset)
        consumer._acked_index[PART].add(offset)
    return consumer


def test_an_offset_the_checkpointer_clamps_is_committed_by_a_later_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commits: list[dict[TP, int]] = []
    consumer = _consumer(monkeypatch, commits)
    durable = [12]  # the partition's checkpoint covers 10 and 11 only, so far

    async def checkpointer(offsets: Mapping[TP, int]) -> Mapping[TP, int]:
        return {tp: min(offset, durable[0]) for tp, offset in offsets.items()}

    consumer.transport.checkpointer = checkpointer

    async def scenario() -> None:
        assert await consumer.commit()
        assert commits == [{PART: 12}]
        assert consumer.acknowledged_to(PART) == 15  # 12..14 are still on the books
        durable[0] = 15  # the checkpoint caught up; no record came since
        assert await consumer.commit()

    asyncio.run(scenario())
    assert commits == [{PART: 12}, {PART: 15}]
    assert consumer._committed_offset[PART] == 15


def test_a_postponed_round_is_committed_by_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    commits: list[dict[TP, int]] = []
    consumer = _consumer(monkeypatch, commits)
    broker_away = [True]

    async def checkpointer(offsets: Mapping[TP, int]) -> Mapping[TP, int]:
        if broker_away[0]:
            raise KafkaConnectionError("broker restarting")
        return offsets

    consumer.transport.checkpointer = checkpointer

    async def scenario() -> None:
        assert not await consumer.commit()
        assert commits == []
        broker_away[0] = False
        assert await consumer.commit()

    asyncio.run(scenario())
    assert commits == [{PART: 15}]

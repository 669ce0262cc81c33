"""Which telemetry partitions a Kafka worker's board reads back at each assignment
(``engine.runtime.dispatch.board_kafka.BoardReadBack``): those new in it, not the ones it
kept, not other topics'. The read-back itself runs on a real Kafka
(``tests/integration/test_board_kafka.py``); here it is replaced by a recorder."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from faust.types import TP

from engine.runtime.dispatch.board import StationBoard
from engine.runtime.dispatch.board_kafka import BoardReadBack

TOPIC = "vigil-t-telemetry"


class Recorder(BoardReadBack):
    def __init__(self) -> None:
        super().__init__(StationBoard(), "127.0.0.1:9", TOPIC, "vigil-t")
        self.read: list[list[int]] = []

    async def read_back(self, partitions: Iterable[int], now_ms: int | None = None) -> int:
        self.read.append(sorted(partitions))
        return 0


def test_each_assignment_reads_back_the_telemetry_partitions_new_in_it() -> None:
    async def go() -> list[list[int]]:
        reader = Recorder()
        for assigned in (
            {TP(TOPIC, 0), TP(TOPIC, 1), TP("vigil-t-alerts", 2)},
            {TP(TOPIC, 1), TP(TOPIC, 2), TP(TOPIC, 3)},  # 0 went to another worker
            {TP(TOPIC, 1), TP(TOPIC, 2), TP(TOPIC, 3)},  # a rebalance that moved nothing
            {TP(TOPIC, 0)},  # back, after another worker evaluated it
            set(),
        ):
            await reader._assigned(None, assigned)
            await asyncio.gather(*reader._tasks)
        return reader.read

    assert asyncio.run(go()) == [[0, 1], [2, 3], [0]]

"""A Kafka worker's station board read back from the telemetry topic (issue 17,
``engine.runtime.dispatch.board_kafka``), on a real Kafka.

First the read-back itself: what a consumer group committed of a telemetry topic,
appended since the bound (the trace's span and an hour), not before it nor past the
committed offset, a partition never committed not at all, into a board that already
took a later reading. Then ``vigil worker`` with the dispatcher, SIGKILLed once its
readings are committed and started again: the duty room's station list it serves shows
the same last readings and sparkline as before (no replay brings them back: they were
committed), and a new reading lands on that board. Last, two workers each evaluating
some of the stations: the page's station list served by either lists every station with
the last value and sparkline of a reference board fed the same readings; a reading of
a station the other worker evaluates reaches the page live; and when that worker is
killed its stations stay on the page and are then taken over (``board_cluster``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from engine.contracts.batch import TelemetryBatch, Tick
from engine.runtime.dispatch.board import RESTORE_SLACK_MS, StationBoard
from engine.runtime.dispatch.board_kafka import BoardReadBack
from engine.runtime.dispatch.forwarding import SERVED_BY
from engine.runtime.kafka.producer import partition_for
from tests.integration.http_receiver import HttpReceiver
from tests.integration.kafka_load import WorkerProcess, wait_until_committed
from tests.integration.test_dispatch_gateway import wait_for
from tests.integration.test_dispatch_kafka import (
    PARTITIONS,
    STEP,
    T0,
    Workers,
    _station,
    _took_over,
    hooks,
)

__all__ = ["hooks"]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUCKET = 300_000


async def _write(
    bootstrap: str, topic: str, records: list[tuple[int, bytes, int]], commit: dict[int, int]
) -> None:
    """``topic`` with 2 partitions, ``records`` (partition, value, timestamp ms) in it,
    and ``commit`` ({partition: offset}) committed for the group ``topic + "-group"``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for p, value, ts in records:
            await producer.send_and_wait(topic, value, partition=p, timestamp_ms=ts)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=topic + "-group", enable_auto_commit=False
    )  # auto-commit would commit its own position at the stop
    await consumer.start()
    try:
        offsets = {TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in commit.items()}
        consumer.assign(list(offsets))  # a manual assignment commits without joining
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def test_kafka_read_back_takes_the_committed_records_since_the_bound(
    kafka_bootstrap: str,
) -> None:
    """``BoardReadBack.read_back`` as of ``now``: the record appended a millisecond before
    ``now - span - RESTORE_SLACK_MS`` is not read, the one at the bound is, and so is the
    rest up to the committed offset, not beyond; a tick and an undecodable record are
    passed over; a partition never committed is not read (the topology replays it). The
    reading the live board took before stays the newest."""
    topic = f"vigil-board-{uuid.uuid4().hex[:8]}-telemetry"
    board = StationBoard(bucket_ms=BUCKET, points=3)
    now = int(time.time() * 1000)  # the broker may refuse timestamps far from its clock
    bound = now - 3 * BUCKET - RESTORE_SLACK_MS
    assert board.read_back_from(now) == bound

    def batch(i: int, station: str = "HZ001") -> bytes:
        return TelemetryBatch.from_rows([(station, "water_level", T0 + i * BUCKET, i)]).encode()

    tick = TelemetryBatch.of_tick(Tick(now, 5000)).encode()
    records = [
        (0, batch(0), bound - 1),  # before the bound
        (0, batch(1), bound),
        (0, tick, bound),
        (0, b"\x93not a batch", bound),  # live, it went to the dead letters
        (0, batch(2), bound + 1),
        (0, batch(3), now),  # committed: offset 5 is the first not committed
        (0, batch(9), now),  # not committed: the topology replays it
        (1, batch(7, "NB101"), now),  # partition 1 never committed
    ]
    asyncio.run(_write(kafka_bootstrap, topic, records, {0: 6}))
    # What the live board took meanwhile: the replay's first batch.
    board.observe(TelemetryBatch.decode(batch(9)))
    version = board.version
    reader = BoardReadBack(board, kafka_bootstrap, topic, topic + "-group")
    assert asyncio.run(reader.read_back([0, 1], now_ms=now)) == 3
    r = board.of("HZ001")["water_level"]
    assert (r.ts, r.value) == (T0 + 9 * BUCKET, 9.0)
    assert r.trace(BUCKET) == [(T0 + 9 * BUCKET, 9.0)]  # 1..3 are out of the span now
    assert board.of("NB101") == {}
    assert board.version == version + 1  # the page's stream is told

    # Without the later reading: the readings read back, as the gateway's would be.
    board = StationBoard(bucket_ms=BUCKET, points=3)
    reader = BoardReadBack(board, kafka_bootstrap, topic, topic + "-group")
    assert asyncio.run(reader.read_back([0, 1], now_ms=now)) == 3
    r = board.of("HZ001")["water_level"]
    assert (r.ts, r.value) == (T0 + 3 * BUCKET, 3.0)
    assert r.trace(BUCKET) == [(T0 + i * BUCKET, float(i)) for i in (1, 2, 3)]


def _board(worker: WorkerProcess) -> dict[str, Any] | None:
    """Each station's (level, last readings, sparkline) as ``worker``'s page reads them
    (``/api/stations``), once it serves them itself (it owns the dispatcher)."""
    try:
        r = httpx.get(f"http://127.0.0.1:{worker.web_port}/api/stations", timeout=30)
    except httpx.HTTPError:
        return None
    if r.status_code != 200 or SERVED_BY in r.headers:
        return None
    return {s["id"]: (s["level"], s["readings"], s["spark"]) for s in r.json()["stations"]}


def test_a_restarted_worker_shows_the_board_it_showed_before(
    kafka_bootstrap: str, tmp_path: Path, hooks: HttpReceiver
) -> None:
    ws = Workers(kafka_bootstrap, tmp_path, hooks)
    with ws.watched():
        w1 = ws.start("w1")
        w1.wait_ready()
        # HZ001 goes red (above 4.5 m) and stays there; NB101 reports normal levels. One
        # record per step and partition, as the ingest writes them.
        for i, (hz, nb) in enumerate([(5.0, 2.0), (5.1, 2.1), (5.2, 2.2)]):
            ws.produce([("HZ001", "water_level", T0 + i * STEP, hz)])
            ws.produce([("NB101", "water_level", T0 + i * STEP, nb)])

        def shown() -> dict[str, Any] | None:
            board = _board(w1)
            if board and board["HZ001"][0] == "red" and board["NB101"][1]:
                hz_spark = board["HZ001"][2].get("water_level", [])
                if len(hz_spark) == 3 and board["NB101"][1]["water_level"]["value"] == 2.2:
                    return board
            return None

        before = wait_for("the red and the readings on the page", shown, timeout=180)
        assert before["HZ001"][1]["water_level"]["value"] == 5.2
        assert before["HZ001"][2]["water_level"] == [
            [T0 + i * STEP, v] for i, v in enumerate([5.0, 5.1, 5.2])
        ]

        # Every reading committed: after the restart the topology replays none of them,
        # only the read-back can bring them back.
        def alive() -> str | None:
            return None if w1.proc.poll() is None else f"w1 exited:\n{w1.tail()}"

        wait_until_committed(kafka_bootstrap, ws.layout, 120, alive)

        w1.kill()  # SIGKILL: nothing stored at the end
        again = WorkerProcess(tmp_path, "w1-again", w1.config, kafka_bootstrap, w1.web_port)
        ws.workers["w1-again"] = again
        again.wait_ready()
        wait_for("the restarted worker to own the dispatcher", lambda: _took_over(again), 180)

        def read_back() -> dict[str, Any] | None:
            board = _board(again)
            return board if board and board["HZ001"][1] and board["NB101"][1] else None

        # No reading came since the kill: what the page shows now was read back.
        after = wait_for("the restarted worker's page to show readings", read_back, 120)
        assert after == before

        # The live feed goes on into the board read back.
        ws.produce([("HZ001", "water_level", T0 + 3 * STEP, 5.3)])
        hz_level, _, hz_spark = before["HZ001"]
        expected = {
            **before,
            "HZ001": (
                hz_level,
                {"water_level": {**before["HZ001"][1]["water_level"],
                                 "ts": T0 + 3 * STEP, "value": 5.3}},
                {"water_level": [*hz_spark["water_level"], [T0 + 3 * STEP, 5.3]]},
            ),
        }  # fmt: skip
        wait_for("the new reading on the page", lambda: _board(again) == expected, 120)


def _page(worker: WorkerProcess) -> list[dict[str, Any]] | None:
    """The station rows the page on ``worker`` reads (``/api/stations``, served by the
    dispatcher's owner)."""
    try:
        r = httpx.get(f"http://127.0.0.1:{worker.web_port}/api/stations", timeout=30)
    except httpx.HTTPError:
        return None
    return r.json()["stations"] if r.status_code == 200 else None


def _shown(worker: WorkerProcess) -> dict[str, Any] | None:
    """Each station's (level, last value and time per metric, sparkline) on the page."""
    rows = _page(worker)
    if rows is None:
        return None
    return {
        s["id"]: (s["level"], {m: (x["value"], x["ts"]) for m, x in s["readings"].items()},
                  s["spark"])
        for s in rows
    }  # fmt: skip


def _stale(worker: WorkerProcess) -> set[str] | None:
    """The stations the page shows as stale (their worker did not answer)."""
    rows = _page(worker)
    return None if rows is None else {s["id"] for s in rows if s["stale"]}


def _expected(readings: list[tuple[str, str, int, float]]) -> dict[str, Any]:
    """What the page shows (``_shown``) of a reference board fed ``readings``, every
    station red."""
    board = StationBoard()
    board.observe(TelemetryBatch.from_rows(readings))
    return {
        s: (
            "red",
            {m: (r.value, r.ts) for m, r in board.of(s).items()},
            {m: [[t, v] for t, v in r.trace(board.bucket_ms)] for m, r in board.of(s).items()},
        )
        for s in board.stations
    }


def _own_stations(worker: WorkerProcess) -> set[str]:
    """The stations on ``worker``'s own board (``/api/board``: never passed on)."""
    r = httpx.get(f"http://127.0.0.1:{worker.web_port}/api/board", timeout=30)
    assert r.status_code == 200 and SERVED_BY not in r.headers
    return set(r.json()["stations"])


def _assigned(worker: WorkerProcess) -> set[int]:
    """The telemetry partitions ``worker`` is assigned now (its lag view)."""
    r = httpx.get(f"http://127.0.0.1:{worker.web_port}/vigil/lag/", timeout=30)
    assert r.status_code == 200, r.text
    return {int(p) for p in r.json()["partitions"]}


def test_the_page_shows_every_workers_stations(
    kafka_bootstrap: str, tmp_path: Path, hooks: HttpReceiver
) -> None:
    ws = Workers(kafka_bootstrap, tmp_path, hooks)
    # Two stations on each telemetry partition: each worker evaluates some of them.
    ids: list[str] = []
    candidates = [f"ST{i:03d}" for i in range(500)]
    for p in range(PARTITIONS):
        ids += [s for s in candidates if partition_for(s, PARTITIONS) == p][:2]
    (tmp_path / "stations.yaml").write_text(
        yaml.safe_dump({"stations": [_station(s, "qiantang") for s in ids]})
    )
    with ws.watched():
        w1, w2 = ws.start_ready("w1", "w2")
        # Every station red (above 4.5 m), three reports each, one record per partition.
        readings = []
        for i in range(3):
            step = [(s, "water_level", T0 + i * STEP, 5.0 + i / 10 + k / 100)
                    for k, s in enumerate(ids)]  # fmt: skip
            ws.produce(step)
            readings += step
        expected = _expected(readings)
        for w in (w1, w2):  # served by either worker (one passes it on to the owner)
            wait_for(f"every station on {w.name}'s page", lambda w=w: _shown(w) == expected, 180)
            assert _stale(w) == set()
        # Both workers hold telemetry partitions: each evaluates some of the stations.
        mine, yours = _own_stations(w1), _own_stations(w2)
        assert mine and yours and mine | yours == set(ids)

        owner = wait_for(
            "a worker to own the dispatcher",
            lambda: next((w for w in (w1, w2) if _took_over(w) is not None), None),
            timeout=120,
        )
        other = w2 if owner is w1 else w1
        # A new reading of a station only the other worker evaluates: live on the page
        # (the stream is the owner's, the reading the other worker's).
        # (Chosen by the other worker's assignment, not by the boards: a board keeps the
        # stations of partitions a rebalance took from it.)
        parts = wait_for("the other worker's partitions", lambda: _assigned(other))
        theirs = next(s for s in ids if partition_for(s, PARTITIONS) in parts)
        url = f"http://127.0.0.1:{other.web_port}"
        with httpx.stream("GET", url + "/api/stream", timeout=60) as stream:
            lines = stream.iter_lines()
            assert [next(lines) for _ in range(2)] == ["retry: 1000", "event: change"]
            late = [(theirs, "water_level", T0 + 3 * STEP, 5.5)]
            ws.produce(late)
            event = next(line for line in lines if line.startswith("event: "))
            assert event in ("event: readings", "event: change")
        readings += late
        expected = _expected(readings)
        wait_for("the new reading on the page", lambda: _shown(owner) == expected, 60)

        # The other worker killed: its stations stay on the page, marked stale (the
        # group notices only after its session timeout, 10 s), then the owner takes its
        # partitions over and reads them back.
        only_theirs = _own_stations(other) - _own_stations(owner)
        other.kill()
        assert _shown(owner) == expected
        wait_for(
            "the killed worker's stations kept, marked stale",
            lambda: _stale(owner) == only_theirs and _shown(owner) == expected,
            timeout=60,
        )
        wait_for(
            "the owner to show every station as its own",
            lambda: _own_stations(owner) == set(ids) and _stale(owner) == set(),
            timeout=180,
        )
        assert _shown(owner) == expected

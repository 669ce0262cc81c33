"""A real Kafka 3.9 (KRaft) broker from scripts/kafka, used with aiokafka and faust-streaming.

These prove that the client stack pinned by the project (faust-streaming 0.15.x on
aiokafka 0.14) works against the Kafka 3.9 server the integration suite runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.kafka_fixture import KafkaCluster

pytestmark = pytest.mark.integration


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _create_topic(bootstrap: str, topic: str, partitions: int, replicas: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replicas)])
    finally:
        await admin.close()


async def _consume(
    bootstrap: str, topic: str, expected: int, timeout: float = 60.0
) -> list[tuple[int, bytes | None, bytes | None]]:
    """Read `expected` records of `topic` from the beginning: (partition, key, value)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[tuple[int, bytes | None, bytes | None]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                got.extend((tp.partition, r.key, r.value) for r in records)
    finally:
        await consumer.stop()
    return got


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


def test_produce_and_consume_roundtrip(kafka_bootstrap: str) -> None:
    topic = _name("vigil-roundtrip")
    records = [(f"sensor-{i % 5}".encode(), f"reading-{i}".encode()) for i in range(20)]

    async def scenario() -> list[tuple[int, bytes | None, bytes | None]]:
        await _create_topic(kafka_bootstrap, topic, partitions=3)
        await _produce(kafka_bootstrap, topic, records)
        return await _consume(kafka_bootstrap, topic, expected=len(records))

    got = asyncio.run(scenario())
    assert sorted((k, v) for _, k, v in got) == sorted(records)
    # Same key, same partition; per-key order is preserved.
    by_key: dict[bytes | None, set[int]] = {}
    for partition, key, _ in got:
        by_key.setdefault(key, set()).add(partition)
    assert all(len(parts) == 1 for parts in by_key.values())
    for key in {k for k, _ in records}:
        assert [v for _, k, v in got if k == key] == [v for k, v in records if k == key]


FAUST_APP = textwrap.dedent(
    """
    import os

    import faust

    app = faust.App(
        os.environ["VIGIL_TEST_APP_ID"],
        broker="kafka://" + os.environ["VIGIL_TEST_BOOTSTRAP"],
        store="memory://",
        topic_partitions=4,
        topic_replication_factor=1,
        web_enabled=False,
    )
    source = app.topic(
        os.environ["VIGIL_TEST_SOURCE"], partitions=4, key_type=str, value_serializer="json"
    )
    sink = app.topic(os.environ["VIGIL_TEST_SINK"], key_type=str, value_serializer="json")


    @app.agent(source)
    async def forward(stream):
        async for event in stream.events():
            await sink.send(key=event.key, value={**event.value, "via": "faust"})


    if __name__ == "__main__":
        app.main()
    """
)


def _wait_for_line(log: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if needle in text:
            return
        if proc.poll() is not None:
            pytest.fail(f"faust worker exited with {proc.returncode}:\n{text[-4000:]}")
        time.sleep(0.25)
    pytest.fail(f"faust worker not {needle!r} after {timeout:.0f}s:\n{log.read_text()[-4000:]}")


def test_faust_agent_forwards_between_topics(kafka_bootstrap: str, tmp_path: Path) -> None:
    source, sink = _name("vigil-faust-in"), _name("vigil-faust-out")
    app_file = tmp_path / "forward_app.py"
    app_file.write_text(FAUST_APP)
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "VIGIL_TEST_APP_ID": _name("vigil-faust-smoke"),
        "VIGIL_TEST_BOOTSTRAP": kafka_bootstrap,
        "VIGIL_TEST_SOURCE": source,
        "VIGIL_TEST_SINK": sink,
        "PYTHONUNBUFFERED": "1",
    }

    # faust declares (creates) only its internal topics (changelogs, repartition,
    # assignor); application topics must exist before the worker subscribes, or the
    # assignor ignores them ("Ignoring missing topic") and the agent never gets a partition.
    async def create_topics() -> None:
        await _create_topic(kafka_bootstrap, source, partitions=4)
        await _create_topic(kafka_bootstrap, sink, partitions=4)

    asyncio.run(create_topics())
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, str(app_file), "worker", "--without-web", "--loglevel", "info"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_line(log, "[^Worker]: Ready", worker, timeout=120)
        records = [
            (f"station-{i % 7}".encode(), json.dumps({"seq": i}).encode()) for i in range(40)
        ]

        async def scenario() -> tuple[list[tuple[int, bytes | None, bytes | None]], set[int]]:
            await _produce(kafka_bootstrap, source, records)
            got = await _consume(kafka_bootstrap, sink, expected=len(records), timeout=90)
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
            await producer.start()
            try:
                partitions = await producer.partitions_for(source)
            finally:
                await producer.stop()
            return got, partitions

        got, source_partitions = asyncio.run(scenario())
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

    worker_log = log.read_text(errors="replace")
    assert source_partitions == {0, 1, 2, 3}
    assert len(got) == len(records), f"{len(got)} of {len(records)} arrived:\n{worker_log[-4000:]}"
    values = [json.loads(v or b"null") for _, _, v in got]
    assert sorted(v["seq"] for v in values) == list(range(len(records)))
    assert all(v["via"] == "faust" for v in values)
    assert {k for _, k, _ in got} == {k for k, _ in records}
    assert "Traceback" not in worker_log, worker_log[-4000:]


@pytest.mark.slow
def test_three_node_cluster_survives_broker_restart(kafka_cluster3: KafkaCluster) -> None:
    bootstrap = kafka_cluster3.bootstrap
    assert len(bootstrap.split(",")) == 3
    topic = _name("vigil-rf3")
    before = [(b"k", f"before-{i}".encode()) for i in range(5)]
    after = [(b"k", f"after-{i}".encode()) for i in range(5)]

    asyncio.run(_create_topic(bootstrap, topic, partitions=2, replicas=3))
    asyncio.run(_produce(bootstrap, topic, before))
    kafka_cluster3.restart_broker(2, kill=True)
    asyncio.run(_produce(bootstrap, topic, after))
    got = asyncio.run(_consume(bootstrap, topic, expected=len(before) + len(after)))
    assert [v for _, _, v in got] == [v for _, v in before + after]


def test_topics_are_created_and_a_partition_mismatch_is_refused(kafka_bootstrap: str) -> None:
    from engine.runtime.kafka.topics import TopicLayout, TopicMismatch, ensure_topics

    layout = TopicLayout(_name("vigil-layout"), 6)
    created = asyncio.run(ensure_topics(kafka_bootstrap, layout))
    assert set(created) == {t.name for t in layout.new_topics()}
    assert asyncio.run(ensure_topics(kafka_bootstrap, layout)) == []  # idempotent

    # An alerts topic of another count: a batch's alerts would have no partition to go to.
    other = TopicLayout(_name("vigil-layout"), 6)
    asyncio.run(_create_topic(kafka_bootstrap, other.alerts, 3))
    with pytest.raises(TopicMismatch, match="alerts has 3 partitions"):
        asyncio.run(ensure_topics(kafka_bootstrap, other))

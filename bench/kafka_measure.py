"""How ``bench/kafka_e2e.py`` measures a worker process on Kafka: ready when its log
says so, its consumer group's lag sampled until it has committed the end of every
watched topic, and stopped without hiding a crash that happened during the run.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

__all__ = ["monitor", "stop", "wait_log"]


async def _lag(bootstrap: str, group: str, topics: dict[str, int]) -> dict[str, int]:
    """Per topic: the sum over its partitions of (end offset - group's committed offset)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        ends = await consumer.end_offsets(tps)
        committed = {
            tp: m.offset for tp, m in (await admin.list_consumer_group_offsets(group)).items()
        }
        lag = dict.fromkeys(topics, 0)
        for tp, end in ends.items():
            lag[tp.topic] += max(0, end - committed.get(tp, 0))
        return lag
    finally:
        await consumer.stop()
        await admin.close()


async def monitor(
    bootstrap: str,
    group: str,
    topics: dict[str, int],
    produced: asyncio.Event,
    samples: list[dict[str, int]],
) -> float:
    """Sample lag until the producer is done and the group has committed the end of
    every topic in ``topics``; returns the time. Each sample is every topic's lag.

    For Vigil these are the telemetry, alerts and corroboration topics: the run ends
    when every reading is evaluated and every alert it raised is dispatched, not when
    the last batch is evaluated with its alerts still queued.
    """
    while True:
        lag = await _lag(bootstrap, group, topics)
        samples.append(lag)
        if produced.is_set() and not any(lag.values()):
            return time.monotonic()
        await asyncio.sleep(0.5)


def wait_log(log: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Return once ``needle`` is in ``log``; exit with the log's tail if the worker
    exits first or ``timeout`` (s) passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise SystemExit(f"worker exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise SystemExit(f"worker not ready:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM, then SIGKILL after 60 s; says so rather than hide the run's own error.

    A run whose worker had an agent crash (and restart) measured the crash loop, not
    the pipeline: that is an error, not a figure.
    """
    crashed = "Crashed reason" in log.read_text(errors="replace")
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        print(f"{log.name}: no exit 60 s after SIGTERM, killed", file=sys.stderr)
        proc.kill()
        proc.wait()
    if crashed:
        raise SystemExit(f"{log}: an agent crashed during the run; see the log")

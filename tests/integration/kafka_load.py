"""Shared pieces of the Kafka failover tests and the end-to-end benchmark.

A fleet of river gauges (a generated station registry for the flood rule pack), flood
waves that take each gauge through the warning levels and back, worker processes
(``vigil worker``) and a steady load generator producing straight to Kafka with the
batches ``Topology.produce`` writes.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

import rules
from connectors.mqtt.mosquitto import free_port
from engine.contracts.alerts import AlertEvent, unpack_events
from engine.runtime.kafka.producer import TelemetryProducer
from engine.runtime.kafka.topics import TopicLayout, ensure_topics

PACKS = Path(rules.__file__).resolve().parent / "packs"
T0 = 1_719_763_200_000
STEP_MS = 60_000
REPO = Path(__file__).resolve().parents[2]

Reading = tuple[str, str, int, float]


def write_registry(path: Path, n_stations: int) -> list[str]:
    """River gauges G000.. with characteristic levels; returns their ids."""
    ids = [f"G{i:03d}" for i in range(n_stations)]
    stations = [
        {
            "id": sid,
            "kind": "river_gauge",
            "name": f"Gauge {sid}",
            "basin": "test_river",
            "district": f"d{i % 4}",
            "lat": 30.0 + i * 0.001,
            "lon": 120.0,
            "elevation": 10.0,
            "report_interval": "1m",
            "metrics": {"water_level": "m", "rainfall": "mm"},
            "warning_level": 4.0 + (i % 5) * 0.1,
            "guaranteed_level": 5.0 + (i % 5) * 0.1,
            "historical_max_level": 5.8 + (i % 5) * 0.1,
        }
        for i, sid in enumerate(ids)
    ]
    path.write_text(yaml.safe_dump({"stations": stations}, sort_keys=False))
    return ids


def flood_readings(stations: list[str], n_steps: int) -> list[list[Reading]]:
    """Per time step, one water level per station: a wave up through the levels and down.

    Each gauge peaks at a different height and time. The last step, a day after the
    others, is at 2 m for every gauge: it moves the watermark past every earlier window,
    so the live engine closes them as ``replay`` does at the end of its input.
    """
    steps: list[list[Reading]] = []
    for k in range(n_steps):
        step = []
        for i, sid in enumerate(stations):
            phase = (k + 7 * i) % n_steps / (n_steps - 1)
            shape = math.sin(math.pi * phase) ** 2 if k < n_steps - 20 else 0.0
            peak = 4.2 + (i % 7) * 0.35
            step.append(
                (sid, "water_level", T0 + k * STEP_MS, round(2.0 + (peak - 2.0) * shape, 3))
            )
        steps.append(step)
    end = T0 + n_steps * STEP_MS + 24 * 3600_000
    steps.append([(sid, "water_level", end, 2.0) for sid in stations])
    return steps


def write_settings(tmp: Path, name: str, app_id: str, stations: Path, partitions: int = 12) -> Path:
    """A ``vigil.yaml`` for one worker (its own data dir and alerts file)."""
    settings = {
        "app_id": app_id,
        "data_dir": str(tmp / name / "data"),
        "partitions": partitions,
        "stations": str(stations),
        "rules": [str(PACKS / "flood.yaml")],
        "alerts_jsonl": str(tmp / name / "alerts.jsonl"),
        "console": False,
        "lateness_ms": 0,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


class WorkerProcess:
    """``vigil worker`` as a child process, its output in ``<name>.log``.

    ``web_port`` comes from a free-port helper, and another process on the machine may
    take it before the worker binds it: a worker that exits while starting because its
    web port was taken ("[Errno 98] ... address already in use") is started again on
    ``new_port()`` (``web_port`` then says which, and so does the settings file's
    ``web_port`` if it has one). Any other start failure fails."""

    def __init__(
        self, tmp: Path, name: str, config: Path, bootstrap: str, web_port: int,
        new_port: Callable[[], int] = free_port,
    ) -> None:  # fmt: skip
        self.name = name
        self.log = tmp / f"{name}.log"
        self.config = config
        self.bootstrap = bootstrap
        self.web_port = web_port
        self.new_port = new_port
        #: Web ports it lost to another process while starting, in order.
        self.lost_ports: list[int] = []
        self._start()

    def _start(self) -> None:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba")),
        }
        with self.log.open("ab") as out:
            #: Where this start's output begins in the log.
            self._log_from = out.tell()
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "engine.tools.cli",
                    "worker",
                    "--config",
                    str(self.config),
                    "--broker",
                    f"kafka://{self.bootstrap}",
                    "--web-port",  # wins over the settings' web_port
                    str(self.web_port),
                    "--loglevel",
                    "info",
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _lost_its_port(self) -> bool:
        """This start's output ends with the web port's bind refused as in use."""
        with self.log.open("rb") as log:
            log.seek(self._log_from)
            out = log.read().decode(errors="replace")
        refused = rf"\[Errno {errno.EADDRINUSE}\] error while attempting to bind on address "
        found = re.search(refused + rf"\('[^']*', {self.web_port}\): address already in use", out)
        return found is not None

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until the worker has joined its group and taken its partitions (Faust logs
        "Worker]: Ready"); fails if it exits first (but for its web port taken: then
        it starts again on a fresh one)."""
        deadline = time.monotonic() + timeout
        while "[^Worker]: Ready" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None and self._lost_its_port():
                self.lost_ports.append(self.web_port)
                self.web_port = self.new_port()
                settings = yaml.safe_load(self.config.read_text())
                if "web_port" in settings:  # the acknowledge links' port too
                    settings["web_port"] = self.web_port
                    self.config.write_text(yaml.safe_dump(settings, sort_keys=False))
                self._start()
                continue
            assert self.proc.poll() is None, f"{self.name} exited while starting:\n{self.tail()}"
            assert time.monotonic() < deadline, f"{self.name} not ready after {timeout}s"
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit status. A worker still running after ``timeout``
        seconds fails the test with what it was doing: its asyncio tasks' stacks (mode's
        worker prints them on SIGUSR1), its threads' stacks (py-spy) and its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        size = self.log.stat().st_size
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(3.0)
        spy = Path(sys.executable).with_name("py-spy")
        threads = subprocess.run(
            [str(spy), "dump", "--pid", str(self.proc.pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.kill()
        with self.log.open("rb") as log:
            log.seek(size)
            dump = log.read().decode(errors="replace")
        raise AssertionError(
            f"{self.name} still running {timeout}s after SIGTERM.\n"
            f"its tasks:\n{_task_stacks(dump)}\n"
            f"its threads:\n{threads.stdout}{threads.stderr}\n"
            f"its log before:\n{self.log.read_text(errors='replace')[max(0, size - 8000) : size]}"
        )

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]


class LoadGenerator(threading.Thread):
    """Produces one time step of every station per ``interval_s``, in its own loop."""

    def __init__(
        self, bootstrap: str, layout: TopicLayout, steps: list[list[Reading]], interval_s: float
    ):
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.layout = layout
        self.steps = steps
        self.interval_s = interval_s
        self.done_steps = 0
        self.retries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _run(self) -> None:
        producer = TelemetryProducer(self.bootstrap, self.layout)
        await producer.start()
        try:
            start = time.monotonic()
            for k, step in enumerate(self.steps):
                while True:
                    try:
                        await producer.produce(step)
                        break
                    except Exception:
                        # A broker restart: produce the step again (duplicates are
                        # harmless, the kernels drop readings already counted).
                        self.retries += 1
                        await asyncio.sleep(0.5)
                self.done_steps = k + 1
                delay = start + (k + 1) * self.interval_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            await producer.stop()


async def _group_done(
    bootstrap: str, layout: TopicLayout
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in (layout.telemetry, layout.alerts, layout.corroboration)
            for p in range(layout.partitions)
        ]
        # Committed offsets first, ends second: a stage commits its input only after
        # what it produced is durable, so "committed == end" read in this order cannot
        # miss an alert produced in between.
        committed = await admin.list_consumer_group_offsets(layout.app_id)
        ends = await consumer.end_offsets(tps)
        return dict(ends), {tp: m.offset for tp, m in committed.items() if tp in ends}
    finally:
        await consumer.stop()
        await admin.close()


def wait_until_committed(
    bootstrap: str, layout: TopicLayout, timeout: float, alive: Callable[[], str | None]
) -> None:
    """Until the group's committed offsets reach the end of every partition it reads.

    Telemetry (the evaluate agent: checkpointed state), alerts (the dispatch agent:
    delivered to the sinks) and corroboration (the group rules: their alerts sent).
    Waiting for telemetry alone races the later stages: a worker stopped then leaves
    the last alerts undelivered, or a basin's all-clear unsent, until a later run.
    """
    deadline = time.monotonic() + timeout
    behind: dict[str, tuple[int, int]] = {}
    while time.monotonic() < deadline:
        problem = alive()
        if problem:
            raise AssertionError(problem)
        try:
            # Held basin events first and last: "committed" does not mean applied for
            # them (engine.evaluation.corroboration_buffer), and their release sends alerts.
            held = _held_events(bootstrap, layout)
            ends, committed = asyncio.run(_group_done(bootstrap, layout))
            held = held or _held_events(bootstrap, layout)
        except Exception:  # the broker may still be coming back
            time.sleep(1.0)
            continue
        behind = {
            f"{tp.topic}/{tp.partition}": (committed.get(tp, -1), end)
            for tp, end in ends.items()
            if end > 0 and committed.get(tp, -1) < end
        }
        if held:
            behind["corroboration-pending"] = (held, 0)
        if not behind:
            return
        time.sleep(1.0)
    raise AssertionError(f"not all committed after {timeout}s: (committed, end) {behind}")


def _held_events(bootstrap: str, layout: TopicLayout) -> int:
    """Basin events held for the watermarks (the ``corroboration-pending`` table)."""
    topic = f"{layout.app_id}-corroboration-pending-changelog"
    table: dict[bytes | None, bytes | None] = {}
    for _, key, value in asyncio.run(_read_records(bootstrap, topic, layout.partitions)):
        table[key] = value
    return sum(1 for v in table.values() if v is not None)


async def _read_all(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, bytes]]:
    """(partition, value) of every record, in partition order."""
    records = await _read_records(bootstrap, topic, partitions)
    return [(p, value or b"") for p, _, value in records]


async def _read_records(
    bootstrap: str, topic: str, partitions: int
) -> list[tuple[int, bytes | None, bytes | None]]:
    # From the beginning by the reset strategy itself: ``assign`` starts a reset in the
    # background, and aiokafka applies the answer of one still in flight to a later
    # ``seek_to_beginning`` (both leave the partition awaiting a reset). With the
    # default "latest" that left every position at the end, nothing read, now and then.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[tuple[int, bytes | None, bytes | None]] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        last: dict[int, int] = {}
        count: dict[int, int] = {}
        deadline = time.monotonic() + 60
        while remaining:
            if time.monotonic() > deadline:
                positions = {tp.partition: await consumer.position(tp) for tp in remaining}
                raise AssertionError(
                    f"{topic}: could not read to the end of "
                    f"{sorted(tp.partition for tp in remaining)}: "
                    f"ends={ {tp.partition: ends[tp] for tp in remaining} } last={last} "
                    f"count={count} positions={positions}"
                )
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, records in batches.items():
                out.extend((tp.partition, r.key, r.value) for r in records)
                if records:
                    last[tp.partition] = records[-1].offset
                    count[tp.partition] = count.get(tp.partition, 0) + len(records)
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


def read_alerts(bootstrap: str, topic: str, partitions: int) -> list[AlertEvent]:
    """Every alert event in the alerts topic, in partition order."""
    records = asyncio.run(_read_all(bootstrap, topic, partitions))
    return [event for _, v in records for event in unpack_events(v)]


def read_checkpoints(bootstrap: str, topic: str, partitions: int) -> dict[int, bytes]:
    """The latest checkpoint of each telemetry partition."""
    latest: dict[int, bytes] = {}
    for p, v in asyncio.run(_read_all(bootstrap, topic, partitions)):
        latest[p] = v
    return latest


def create_topics(bootstrap: str, layout: TopicLayout) -> None:
    asyncio.run(ensure_topics(bootstrap, layout))


def _task_stacks(dump: str) -> str:
    """The tasks and their frames from mode's SIGUSR1 dump, without its local variables."""
    keep: list[str] = []
    lines = dump.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(("TASK ", "-> ", "<Task", "THREAD ")):
            keep.append(line)
        elif stripped.startswith('File "'):
            keep.append(line)
            if i + 1 < len(lines) and not lines[i + 1].strip().startswith(("File ", "TASK ")):
                keep.append(lines[i + 1])
    return "\n".join(keep) or dump[-4000:]

"""End-to-end Kafka benchmark: Vigil's batched topology vs a textbook Faust pipeline.

Both run in the same invocation against the same single-node Kafka 3.9 broker
(scripts/kafka), each as one worker process:

* **vigil**: ``vigil worker`` (the real topology, flood rule pack, checkpoints) fed with
  columnar telemetry batches (``engine.contracts.batch``, one record per partition and batch)
  produced with ``acks=all``.
* **textbook**: one Kafka record per reading (JSON, keyed by station) and a Faust agent
  that keeps each station's 15-minute maximum in a windowed table
  (``app.Table(...).tumbling(900)``) and compares it with the station's warning level.

Readings/s = readings / (time from the first produce to the moment the group's committed
offsets reach the end of every telemetry partition and, for Vigil, of the alerts and
corroboration topics: its alerts are dispatched by the worker; the textbook pipeline
only sends its alerts, awaited before each reading is acknowledged). The producer runs
concurrently, so this is producer -> Kafka -> worker -> alerts. Consumer lag of the
telemetry topic (end - committed, in records) is sampled every 0.5 s.

    NUMBA_CACHE_DIR=.cache/numba .venv/bin/python bench/kafka_e2e.py \\
        [--bootstrap HOST:PORT] [--readings 20000000] [--textbook-readings 200000]

The readings come from ``bench/kafka_workload.py``; the workers' readiness, lag and
stop from ``bench/kafka_measure.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from bench.kafka_measure import monitor, stop, wait_log  # noqa: E402
from bench.kafka_workload import (  # noqa: E402
    PARTITIONS,
    WAVE_STEPS,
    flood_level,
    readings_in,
    vigil_batches,
)
from engine.contracts.batch import TelemetryBatch  # noqa: E402
from engine.runtime.kafka.producer import TelemetryProducer  # noqa: E402
from engine.runtime.kafka.topics import TopicLayout, ensure_topics  # noqa: E402
from tests.integration.kafka_load import T0, write_registry, write_settings  # noqa: E402

TEXTBOOK_APP = textwrap.dedent(
    """
    import os, json
    import faust

    app = faust.App(os.environ["TB_APP"], broker="kafka://" + os.environ["TB_BOOT"],
                    store="memory://", topic_partitions=12, topic_replication_factor=1,
                    broker_commit_interval=1.0, web_enabled=False)
    readings = app.topic(os.environ["TB_TOPIC"], key_type=str, value_serializer="json")
    alerts = app.topic(os.environ["TB_TOPIC"] + "-alerts", key_type=str, value_serializer="json")
    window_max = app.Table("window_max", default=lambda: float("-inf"), partitions=12
                           ).tumbling(900.0, expires=3600.0)
    level = app.Table("level", default=int, partitions=12)
    WARNING = 4.0

    @app.agent(readings)
    async def evaluate(stream):
        async for event in stream.events():
            r = event.value
            station = event.key
            m = max(window_max[station].value(), r["value"])
            window_max[station] = m
            new = 1 if m >= WARNING else 0
            if new != level[station]:
                level[station] = new
                value = {"station": station, "level": new, "at": r["ts"]}
                await alerts.send(key=station, value=value)

    if __name__ == "__main__":
        app.main()
    """
)


def run_vigil(
    bootstrap: str, tmp: Path, n_readings: int, n_stations: int, wave_steps: int
) -> dict[str, object]:
    registry = tmp / "stations.yaml"
    stations = write_registry(registry, n_stations)
    layout = TopicLayout(f"bench-vigil-{uuid.uuid4().hex[:6]}", PARTITIONS)
    asyncio.run(ensure_topics(bootstrap, layout))
    rounds = vigil_batches(stations, n_readings, 20_000, wave_steps)
    total = readings_in(rounds)
    config = write_settings(tmp, "vigil", layout.app_id, registry, PARTITIONS)
    log = tmp / "vigil-worker.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.tools.cli", "worker", "--config", str(config),
             "--broker", f"kafka://{bootstrap}", "--loglevel", "info"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_log(log, "[^Worker]: Ready", proc, 180)
        time.sleep(3)  # the group's first rebalance

        async def scenario() -> tuple[float, float, list[dict[str, int]]]:
            producer = TelemetryProducer(bootstrap, layout, linger_ms=2)
            topics = {
                t: PARTITIONS for t in (layout.telemetry, layout.alerts, layout.corroboration)
            }
            await producer.start()
            produced = asyncio.Event()
            samples: list[dict[str, int]] = []
            t0 = time.monotonic()
            mon = asyncio.ensure_future(
                monitor(bootstrap, layout.app_id, topics, produced, samples)
            )
            inflight: list[asyncio.Future[None]] = []
            for rnd in rounds:
                inflight.append(asyncio.ensure_future(producer.produce_encoded(rnd)))
                if len(inflight) >= 4:
                    await inflight.pop(0)
            await asyncio.gather(*inflight)
            t_produced = time.monotonic()
            produced.set()
            t_end = await mon
            await producer.stop()
            return t_produced - t0, t_end - t0, samples

        produce_s, total_s, samples = asyncio.run(scenario())
    finally:
        stop(proc, log)
    by_topic = {
        name: [s[topic] for s in samples]
        for name, topic in (("telemetry", layout.telemetry), ("alerts", layout.alerts),
                            ("corroboration", layout.corroboration))
    }  # fmt: skip
    return {"readings": total, "produce_s": produce_s, "e2e_s": total_s,
            "readings_per_s": total / total_s, "lag_samples_records": by_topic["telemetry"],
            "lag_samples_by_topic": by_topic}  # fmt: skip


def run_offline(tmp: Path, n_readings: int, n_stations: int, wave_steps: int) -> dict[str, object]:
    """The same batches through decode + ``PartitionProcessor`` only: no Kafka, no Faust.

    What the worker's own work costs per reading; the rest of its end-to-end time is
    the transport (fetch, commit, checkpoints, alert records).
    """
    from engine.evaluation.processor import PartitionProcessor
    from rules.api import load_ruleset
    from rules.registry import load_registry
    from tests.integration.kafka_load import PACKS

    registry = tmp / "offline-stations.yaml"
    stations = write_registry(registry, n_stations)
    ruleset = load_ruleset([str(PACKS / "flood.yaml")], load_registry(registry)).ruleset
    rounds = vigil_batches(stations, n_readings, 20_000, wave_steps)
    procs = {p: PartitionProcessor(ruleset, lateness_ms=0) for p in rounds[0]}
    warm = TelemetryBatch.decode(rounds[0][next(iter(rounds[0]))])
    PartitionProcessor(ruleset, lateness_ms=0).process(warm, 0)  # numba: load, not timed
    alerts = decode_s = process_s = 0.0
    total = 0
    for offset, rnd in enumerate(rounds):
        for p, blob in rnd.items():
            t0 = time.perf_counter()
            batch = TelemetryBatch.decode(blob)
            t1 = time.perf_counter()
            alerts += len(procs[p].process(batch, offset))
            t2 = time.perf_counter()
            decode_s += t1 - t0
            process_s += t2 - t1
            total += len(batch)
    return {"readings": total, "decode_s": decode_s, "process_s": process_s,
            "readings_per_s": total / (decode_s + process_s), "alerts": int(alerts)}  # fmt: skip


def run_textbook(
    bootstrap: str, tmp: Path, n_readings: int, n_stations: int, wave_steps: int
) -> dict[str, object]:
    app_id = f"bench-textbook-{uuid.uuid4().hex[:6]}"
    topic = f"{app_id}-readings"

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            # The tables' changelogs too, before the app starts: created by the app on
            # its first send, they showed 0 partitions in its metadata and the agent
            # crashed with PartitionsMismatch every 5 s, processing a few records each
            # time (that was measured as the textbook's speed).
            compact = {"cleanup.policy": "compact"}
            await admin.create_topics(
                [
                    NewTopic(topic, PARTITIONS, 1),
                    NewTopic(topic + "-alerts", PARTITIONS, 1),
                    *(
                        NewTopic(f"{app_id}-{t}-changelog", PARTITIONS, 1, topic_configs=compact)
                        for t in ("window_max", "level")
                    ),
                ]
            )
        finally:
            await admin.close()

    asyncio.run(create())
    app_file = tmp / "textbook_app.py"
    app_file.write_text(TEXTBOOK_APP)
    log = tmp / "textbook-worker.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TB_APP": app_id, "TB_BOOT": bootstrap,
           "TB_TOPIC": topic}  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(app_file), "worker", "--without-web", "--loglevel", "info"],
            cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    stations = [f"G{i:05d}" for i in range(n_stations)]
    try:
        wait_log(log, "[^Worker]: Ready", proc, 180)
        time.sleep(3)

        async def scenario() -> tuple[float, float, list[dict[str, int]]]:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
            await producer.start()
            produced = asyncio.Event()
            samples: list[dict[str, int]] = []
            t0 = time.monotonic()
            # Its alerts are sent (and awaited) before a reading is acknowledged; it has
            # no dispatcher, so its readings' topic is the whole pipeline.
            watched = {topic: PARTITIONS}
            mon = asyncio.ensure_future(monitor(bootstrap, app_id, watched, produced, samples))
            idx = np.arange(n_readings)
            values = flood_level(idx % n_stations, idx // n_stations, wave_steps).tolist()
            futures = []
            for i in range(n_readings):
                s = stations[i % n_stations]
                ts = T0 + (i // n_stations) * 60_000
                futures.append(
                    await producer.send(topic, key=s.encode(),
                                        value=json.dumps({"ts": ts, "value": values[i]}).encode())
                )  # fmt: skip
                if len(futures) >= 10_000:
                    await asyncio.gather(*futures)
                    futures.clear()
            await asyncio.gather(*futures)
            t_produced = time.monotonic()
            produced.set()
            t_end = await mon
            await producer.stop()
            return t_produced - t0, t_end - t0, samples

        produce_s, total_s, samples = asyncio.run(scenario())
    finally:
        stop(proc, log)
    return {"readings": n_readings, "produce_s": produce_s, "e2e_s": total_s,
            "readings_per_s": n_readings / total_s,
            "lag_samples_records": [s[topic] for s in samples]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="an existing broker; default: start one")
    parser.add_argument("--readings", type=int, default=20_000_000)
    parser.add_argument("--textbook-readings", type=int, default=200_000)
    parser.add_argument("--stations", type=int, default=12_000)
    parser.add_argument("--json-out", help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (worker logs)")
    parser.add_argument(
        "--offline", action="store_true", help="only decode + processor on the same batches"
    )
    parser.add_argument(
        "--vigil-only", action="store_true", help="skip the textbook pipeline (no ratio)"
    )
    parser.add_argument(
        "--wave-hours",
        type=float,
        default=WAVE_STEPS / 60,
        help="one flood wave per gauge this often (default a week; 12: alert-heavy)",
    )
    args = parser.parse_args()
    wave_steps = max(2, round(args.wave_hours * 60))
    workdir: contextlib.AbstractContextManager[str] = (
        contextlib.nullcontext(tempfile.mkdtemp(prefix="vigil-bench-"))
        if args.keep
        else tempfile.TemporaryDirectory(prefix="vigil-bench-")
    )
    with workdir as d:
        tmp = Path(d)
        print(f"work dir: {tmp}", file=sys.stderr)
        if args.offline:
            off = run_offline(tmp, args.readings, args.stations, wave_steps)
            print(f"offline   {off['readings']:>11,} readings  decode {off['decode_s']:.2f} s  "
                  f"process {off['process_s']:.2f} s  {off['readings_per_s']:>12,.0f} readings/s  "
                  f"alerts {off['alerts']}")  # fmt: skip
            return 0
        env = {**os.environ, "VIGIL_KAFKA_DIR": str(tmp / "kafka")}
        bootstrap = args.bootstrap
        if bootstrap is None:
            up = subprocess.run([str(REPO / "scripts" / "kafka"), "up"], env=env,
                                capture_output=True, text=True, check=True)  # fmt: skip
            bootstrap = up.stdout.strip().splitlines()[-1]
        try:
            vigil = run_vigil(bootstrap, tmp, args.readings, args.stations, wave_steps)
            textbook = (
                None
                if args.vigil_only
                else run_textbook(bootstrap, tmp, args.textbook_readings, args.stations, wave_steps)
            )
        finally:
            if args.bootstrap is None:
                subprocess.run([str(REPO / "scripts" / "kafka"), "down"], env=env, check=False)
    result: dict[str, object] = {"vigil": vigil}
    if textbook is not None:
        result["textbook"] = textbook
        result["ratio"] = float(vigil["readings_per_s"]) / float(textbook["readings_per_s"])  # type: ignore[arg-type]
    for name in ("vigil", "textbook"):
        r = result.get(name)
        if r is None:
            continue
        assert isinstance(r, dict)
        lag = r["lag_samples_records"]
        print(f"{name:9s} {r['readings']:>11,} readings  e2e {r['e2e_s']:7.2f} s  "
              f"{r['readings_per_s']:>12,.0f} readings/s  (produce {r['produce_s']:.2f} s)  "
              f"lag records max {max(lag)} final {lag[-1]} samples {lag}")  # fmt: skip
        for name, lags in r.get("lag_samples_by_topic", {}).items():
            print(f"  {name} lag: {lags}")
    if "ratio" in result:
        print(f"ratio vigil/textbook: {result['ratio']:.1f}x")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

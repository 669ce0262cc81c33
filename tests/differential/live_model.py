"""The live path in one process: ingest batching, partitions, lag and restarts.

``run_live`` feeds a ``Traffic``'s messages, in arrival order, through what the gateway
does with them, minus the I/O:

* ingest takes runs of consecutive messages as one batch (``connectors.mqtt.client``: up to
  ``batch.max_readings``, or what arrived within the linger time) and splits it into one
  telemetry batch per partition (``Topology.produce``, ``Topology.partition_for``);
* each partition's processor (``engine.evaluation.processor.PartitionProcessor``, with the
  gateway's lateness and a clock at the simulated arrival time) takes its batches in
  offset order, partitions lagging one another by random amounts;
* now and then a partition "crashes": its processor is rebuilt from its last checkpoint
  (a snapshot taken at a random earlier commit, as the embedded log stores it with the
  offsets) and the batches since are applied again, as after a restart.

The events come out in the order the processors raise them, repeats after a restart
included (``tests.differential.compare`` drops repeats as the dispatcher does). Basin
(corroboration) rules are not run here: their live stage is a Faust agent with tables;
the end-to-end test (``tests/integration/test_live_equals_replay.py``) compares them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import BatchBuilder, TelemetryBatch
from engine.contracts.ruleset import RuleSet
from engine.evaluation.processor import PartitionProcessor
from engine.runtime.topology import murmur2_partition
from tests.traffic import Traffic

__all__ = ["LiveRun", "partition_for", "run_live"]


def partition_for(station: str, partitions: int) -> int:
    """The gateway's partition of a station (``Topology.partition_for``, Kafka's murmur2)."""
    return murmur2_partition(station, list(range(partitions)))


@dataclass
class LiveRun:
    events: list[AlertEvent] = field(default_factory=list)
    #: (station, metric, ts, value, reason) of the readings a processor rejected.
    rejected: list[tuple[str, str, int, float, str]] = field(default_factory=list)
    batches: int = 0
    restarts: int = 0


@dataclass
class _Partition:
    log: list[tuple[TelemetryBatch, int]] = field(default_factory=list)  # (batch, arrival)
    checkpoint: bytes | None = None
    proc: PartitionProcessor | None = None
    read: int = 0  # next offset to hand to the processor


def run_live(
    ruleset: RuleSet,
    traffic: Traffic,
    *,
    partitions: int,
    lateness_ms: int,
    plan: int,
    crash_rate: float = 0.02,
) -> LiveRun:
    """Run ``traffic`` through the modelled live path; ``plan`` seeds batching, lag and
    crashes (one plan, one run)."""
    rng = random.Random(plan)
    now = [traffic.start_ms]
    run = LiveRun()
    parts = [_Partition() for _ in range(partitions)]

    def new_processor(p: _Partition) -> PartitionProcessor:
        proc = PartitionProcessor(ruleset, lateness_ms=lateness_ms, clock=lambda: now[0])
        if p.checkpoint is not None:
            proc.restore(p.checkpoint)
        p.read = proc.next_offset
        return proc

    def step(p: _Partition) -> None:
        if p.proc is None:
            p.proc = new_processor(p)
        batch, arrival = p.log[p.read]
        now[0] = max(now[0], arrival)
        run.events += p.proc.process(batch, p.read)
        run.rejected += p.proc.rejected
        p.proc.rejected.clear()
        p.read += 1
        run.batches += 1
        if rng.random() < 0.3:  # a commit: state and offsets together
            p.checkpoint = p.proc.snapshot()

    messages = traffic.messages
    # Ingest batch sizes in messages: single messages, small and large bursts.
    sizes = rng.choice([(1, 3), (1, 40), (20, 400)])
    i = 0
    while i < len(messages):
        chunk = messages[i : i + rng.randint(*sizes)]
        i += len(chunk)
        builders: dict[int, BatchBuilder] = {}
        for m in chunk:
            b = builders.setdefault(partition_for(m.station, partitions), BatchBuilder())
            for ts, value in m.readings:
                b.add(m.station, m.metric, ts, value)
        for pi, b in builders.items():
            parts[pi].log.append((b.build(), chunk[-1].arrival_ms))
        # The partitions' agents catch up by random amounts: they lag one another.
        for p in rng.sample(parts, len(parts)):
            if p.proc is not None and rng.random() < crash_rate:
                p.proc = new_processor(p)  # killed and restarted from its last checkpoint
                run.restarts += 1
            for _ in range(rng.randint(0, len(p.log) - p.read)):
                step(p)
    for p in parts:
        while p.read < len(p.log):
            step(p)
    return run

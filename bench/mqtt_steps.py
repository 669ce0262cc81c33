"""The gateway's own per-reading work at 100 readings per MQTT message, without MQTT:
``deliver`` of a batch through ``MqttIngest._decode`` (topic, registry, JSON, clock
checks), ``batches_by_partition`` of its blocks, and the batches' encoding. CPU time
(``time.process_time``) per reading, minimum and median of the rounds; the decode step
includes the garbage of a whole batch, as in the gateway. Results: ``bench/MQTT_RESULTS.md``.

    .venv/bin/python bench/mqtt_steps.py [--messages 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.ingest import Inbound, deliver
from connectors.mqtt.client import MqttIngest
from connectors.mqtt.options import MqttOptions
from engine.runtime.batching import StationPartitions, batches_by_partition

NOW = 1_719_763_200_000


def _payload(k0: int) -> bytes:
    """100 readings as ``bench/mqtt_e2e.py`` publishes them."""
    items = (
        b'{"value": %.2f, "ts": %d}' % (1 + (k % 97) / 100, NOW - 100_000 + k)
        for k in range(k0, k0 + 100)
    )
    return b"[" + b", ".join(items) + b"]"


async def _measure(messages: int, rounds: int) -> dict[str, list[float]]:
    batch = [
        Inbound(f"vigil/B{i % 4:03d}/water_level", _payload(i * 100), NOW, None)
        for i in range(messages)
    ]

    async def nothing(*args: Any) -> None:
        pass

    stations = {f"B{i:03d}": ["water_level"] for i in range(4)}
    ingest = MqttIngest(MqttOptions(), nothing, nothing, known_stations=stations)
    partition_of = StationPartitions(2)
    ns: dict[str, list[float]] = {"decode": [], "partition": [], "encode": []}
    readings = messages * 100
    got: list[Any] = []

    async def produce(blocks: Any) -> None:
        got.append(blocks)

    for _ in range(rounds):
        got.clear()
        t0 = time.process_time()
        await deliver(batch, ingest._decode, produce, nothing, Counter())
        t1 = time.process_time()
        batches = batches_by_partition(got[0], partition_of)
        t2 = time.process_time()
        for b in batches.values():
            b.encode()
        t3 = time.process_time()
        for step, s in zip(ns, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            ns[step].append(s / readings * 1e9)
    return ns


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000, help="messages in the batch")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    ns = asyncio.run(_measure(args.messages, args.rounds))
    for step, values in ns.items():
        median = statistics.median(values)
        print(f"{step:10s} ns/reading: min {min(values):6.1f}  median {median:6.1f}")
    print(f"{'total':10s} ns/reading: min {sum(min(v) for v in ns.values()):6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

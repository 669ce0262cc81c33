"""How long the JSONL alert sink takes to start, and its peak memory, on a file of N
alert events (issue 13: 2 M events took 9.4 s and 849 MB when it read the whole file).

    .venv/bin/python bench/jsonl_start.py make /tmp/alerts.jsonl 2000000
    .venv/bin/python bench/jsonl_start.py start /tmp/alerts.jsonl

``start`` runs in a fresh process so that ru_maxrss is the sink's start alone.
"""

from __future__ import annotations

import resource
import sys
import time

from engine.contracts.alerts import Level, transition_event


def make(path: str, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            level = Level.RED if i % 2 else Level.NONE
            previous = Level.NONE if i % 2 else Level.RED
            event = transition_event(
                "flood.level", f"HZ{i % 5000:04d}", "water_level", level, previous,
                1_719_763_200_000 + i, 1_719_763_200_000 + i * 1000, 4.2, 4.5,
                f"station HZ{i % 5000:04d} water level 4.2 m", {"basin": "demo_river"},
            )  # fmt: skip
            f.write(event.to_json() + "\n")


def start(path: str) -> None:
    from connectors.sinks.jsonl import JsonlSink

    t0 = time.perf_counter()
    sink = JsonlSink(path)
    keys = len(sink.delivered_keys())
    elapsed = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sink.close()
    print(f"start {elapsed:.2f} s, peak RSS {peak_mb:.0f} MB, {keys} keys remembered")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]))
    else:
        start(sys.argv[2])

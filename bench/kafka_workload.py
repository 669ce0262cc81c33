"""What ``bench/kafka_e2e.py`` feeds both pipelines: a slow flood wave per gauge, one
reading a minute, and the same readings as Vigil's columnar telemetry batches.

Imported by ``bench/kafka_e2e.py`` after it puts the repository on ``sys.path``.
"""

from __future__ import annotations

import numpy as np

from engine.contracts.batch import TelemetryBatch
from engine.runtime.kafka.producer import partition_for
from tests.integration.kafka_load import T0

__all__ = ["PARTITIONS", "WAVE_STEPS", "flood_level", "readings_in", "vigil_batches"]

PARTITIONS = 12

WAVE_STEPS = 7 * 1440  # one flood wave per gauge a week, in 1-minute readings


def flood_level(station: np.ndarray, step: np.ndarray, wave_steps: int = WAVE_STEPS) -> np.ndarray:
    """Water level (m) of gauge ``station`` at minute ``step``: a slow wave per gauge.

    Gauges rise through the warning levels and fall back once per ``wave_steps``
    minutes, each with its own phase and peak (4.2 to 6.3 m; warning levels are
    4.0 to 4.4 m), so alerts are a small share of the readings, as on a real river.
    Uniform noise instead crossed a level at nearly every window (1.5 % of readings
    made an alert) and a 12-hour wave still made about 1 %: such runs measure the
    alert path (one Faust record per alert, sent and dispatched one at a time), not the
    readings' path; KAFKA_RESULTS.md reports that separately.
    """
    phase = ((step + 7 * station) % wave_steps) / wave_steps
    peak = 4.2 + (station % 7) * 0.35
    return np.round(2.0 + (peak - 2.0) * np.sin(np.pi * phase) ** 2, 3)


def vigil_batches(
    stations: list[str], n_readings: int, per_batch: int, wave_steps: int
) -> list[dict[int, bytes]]:
    """Pre-encoded rounds of batches, one per partition per round (numpy, no per-reading Python)."""
    by_part: dict[int, list[str]] = {}
    number = {s: i for i, s in enumerate(stations)}
    for s in stations:
        by_part.setdefault(partition_for(s, PARTITIONS), []).append(s)
    rounds: list[dict[int, bytes]] = []
    # The same minutes in every partition's batch of a round, and the next round starts
    # after them: each (gauge, minute) once, in time order, as a live feed sends them.
    reps = max(1, per_batch // max(len(v) for v in by_part.values()))
    per_round = reps * len(stations)
    step = 0
    for _ in range(max(1, n_readings // per_round)):
        rnd: dict[int, bytes] = {}
        for p, names in by_part.items():
            n = reps * len(names)
            steps = step + np.repeat(np.arange(reps), len(names))
            ts = T0 + steps * 60_000
            ids = np.array([number[x] for x in names], dtype=np.int64)
            value = flood_level(np.tile(ids, reps), steps, wave_steps)
            batch = TelemetryBatch(
                stations=tuple(names),
                metrics=("water_level",),
                station_idx=np.tile(np.arange(len(names), dtype=np.uint32), reps),
                metric_idx=np.zeros(n, np.uint16),
                ts=ts.astype(np.int64),
                value=value,
                quality=np.zeros(n, np.uint8),
            )
            rnd[p] = batch.encode()
        step += reps
        rounds.append(rnd)
    return rounds


def readings_in(rounds: list[dict[int, bytes]]) -> int:
    """Readings in ``rounds`` (every round holds as many as the first)."""
    return sum(len(TelemetryBatch.decode(b)) for b in rounds[0].values()) * len(rounds)

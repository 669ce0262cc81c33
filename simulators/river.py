"""River-gauge flood hydrographs: rise through the warning level, peak, recession.

The stage follows a gamma-shaped flood wave, the usual shape of a unit hydrograph:

    h(t) = base + (peak - base) * (t / tp)^k * exp(k * (1 - t / tp))

with ``tp`` the time to peak and ``k`` the sharpness (larger: steeper rise and faster
recession). Gauge noise is Gaussian (default 1 cm), seeded, so runs are reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["FloodWave", "flood_readings"]

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class FloodWave:
    """One gauge's flood. Levels in metres, times in hours from the event start."""

    station: str
    base: float
    peak: float
    time_to_peak_h: float = 12.0
    sharpness: float = 3.0
    noise_m: float = 0.01

    def level(self, t_h: float) -> float:
        if t_h <= 0:
            return self.base
        x = t_h / self.time_to_peak_h
        shape = x**self.sharpness * math.exp(self.sharpness * (1 - x))
        return self.base + (self.peak - self.base) * shape


def flood_readings(
    waves: Sequence[FloodWave],
    start_ms: int,
    hours: float,
    step_minutes: float = 5.0,
    metric: str = "water_level",
    seed: int = 7,
) -> Iterator[tuple[str, str, int, float]]:
    """Readings (station, metric, ts_ms, value) in time order, every ``step_minutes``."""
    rng = random.Random(seed)
    step_ms = int(step_minutes * 60_000)
    for k in range(int(hours * HOUR_MS // step_ms) + 1):
        ts = start_ms + k * step_ms
        t_h = (ts - start_ms) / HOUR_MS
        for wave in waves:
            value = wave.level(t_h) + rng.gauss(0.0, wave.noise_m)
            yield wave.station, metric, ts, round(value, 3)

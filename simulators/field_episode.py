"""The field stations of ``vigil demo`` and the field-server tests: a reservoir RTU
(SL 651) whose level rises through a flood and recedes, and an air-quality station
(HJ 212) through a pollution episode. Both follow ``simulators.river.FloodWave``'s
gamma-shaped wave, in hours from ``start`` (the stations' local clock)."""

from __future__ import annotations

from datetime import datetime

from simulators.hj212_station import Hj212Station
from simulators.river import FloodWave
from simulators.sl651_rtu import Sl651Rtu

__all__ = ["EpisodeAirStation", "FloodedReservoirRtu"]


def _hours(t: datetime, start: datetime) -> float:
    return (t - start).total_seconds() / 3600


class FloodedReservoirRtu(Sl651Rtu):
    """Reservoir level (m) from ``base`` to ``peak`` and back; rain while it rises."""

    def __init__(self, start: datetime, base: float = 115.6, peak: float = 120.6,
                 time_to_peak_h: float = 14.0, **kwargs: object) -> None:  # fmt: skip
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.start = start
        self.wave = FloodWave("reservoir", base, peak, time_to_peak_h, noise_m=0.0)

    def values(self, t: datetime) -> tuple[float, float, float]:
        h = _hours(t, self.start)
        rain = 1.5 if 0 <= h < self.wave.time_to_peak_h * 0.6 else 0.0
        return rain, round(self.wave.level(h), 3), 12.6


class EpisodeAirStation(Hj212Station):
    """PM2.5 and PM10 (µg/m³) through a pollution episode peaking ``time_to_peak_h``
    after ``start``; the other pollutants as ``Hj212Station``."""

    def __init__(self, start: datetime, peak_pm2_5: float = 180.0,
                 time_to_peak_h: float = 18.0, **kwargs: object) -> None:  # fmt: skip
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.start = start
        self.wave = FloodWave("air", 35.0, peak_pm2_5, time_to_peak_h, noise_m=0.0)

    def values(self, t: datetime) -> dict[str, float]:
        out = super().values(t)
        pm2_5 = round(self.wave.level(_hours(t, self.start)), 1)
        out.update({"a34004": pm2_5, "a34002": round(pm2_5 * 1.5, 1)})
        return out

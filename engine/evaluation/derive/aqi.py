"""Hourly AQI derived from pollutant readings (HJ 633, real-time practice).

Input readings per air-quality station, one per pollutant and hour, stamped with the
hour (ms, UTC): ``pm2_5``, ``pm10``, ``so2``, ``no2``, ``o3`` in µg/m³ and ``co`` in
mg/m³ (1-h values), and optionally ``pm2_5_24h`` / ``pm10_24h`` when the analyser or the
platform reports the 24-h moving means itself. Output: one ``aqi`` reading per station
and hour, which rules then treat like any measured metric, and the primary pollutant(s)
for the record.

Averaging (``shared/domain/FACTS.md`` §3.2): PM2.5 and PM10 on their 24-h moving mean
(the reported one, else the mean of hours X-23..X with at least 20 valid), SO2, NO2, CO
and O3 on the 1-h value, O3 also on the 8-h moving mean (hours X-7..X, at least 6
valid); SO2 above 800 µg/m³ falls back to the SO2 24-h IAQI. The arithmetic is
``engine.evaluation.kernels.aqi``.

An hour is computed once it is complete: when a reading of a later hour arrives for that
station, or when the partition's watermark passes the hour's end plus the lateness.
This stage is plain Python over station-hours, not readings of the hot path: an AQ
station sends a handful of values an hour.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.contracts.batch import TelemetryBatch
from engine.evaluation.kernels.aqi import realtime_aqi

__all__ = ["POLLUTANTS", "AqiDeriver", "AqiHour"]

HOUR_MS = 3_600_000
POLLUTANTS = ("pm2_5", "pm2_5_24h", "pm10", "pm10_24h", "so2", "no2", "co", "o3")
_HISTORY_H = 24


@dataclass(frozen=True)
class AqiHour:
    station: str
    hour: int  # ms, start of the hour
    aqi: float
    primary: tuple[str, ...]  # empty when AQI <= 50


@dataclass
class _Station:
    hours: dict[int, dict[str, float]] = field(default_factory=dict)  # hour -> metric -> value
    done: int = -(2**62)  # the last hour computed


def _mean(values: list[float], min_valid: int) -> float:
    valid = [v for v in values if not math.isnan(v)]
    return sum(valid) / len(valid) if len(valid) >= min_valid else math.nan


class AqiDeriver:
    """Per-station hourly buffers -> AQI readings, in event-time order per station."""

    metric = "aqi"

    def __init__(self, stations: Iterable[str], lateness_ms: int) -> None:
        self.stations = frozenset(stations)
        self.lateness_ms = lateness_ms
        self._state: dict[str, _Station] = {}
        #: Pollutant readings for an hour already computed: (station, metric, ts, value,
        #: reason), for the dead-letter topic; the processor drains them.
        self.rejected: list[tuple[str, str, int, float, str]] = []
        #: AQI hours computed since the last drain (for `vigil replay --metrics-out`);
        #: None when nobody collects them.
        self.record: list[AqiHour] | None = None

    def feed(self, batch: TelemetryBatch, watermark: int) -> list[tuple[str, str, int, float]]:
        """Take a batch's pollutant readings; returns the AQI readings of completed hours."""
        wanted = [i for i, m in enumerate(batch.metrics) if m in POLLUTANTS]
        if wanted:
            rows = np.flatnonzero(np.isin(batch.metric_idx, wanted))
            for r in rows.tolist():
                station = batch.stations[int(batch.station_idx[r])]
                if station not in self.stations:
                    continue
                hour = int(batch.ts[r]) // HOUR_MS * HOUR_MS
                st = self._state.setdefault(station, _Station())
                metric = batch.metrics[int(batch.metric_idx[r])]
                if hour <= st.done:  # that hour is computed; a late value cannot change it
                    self.rejected.append((
                        station, metric, int(batch.ts[r]), float(batch.value[r]),
                        f"late for the hourly AQI: the station's hour {hour} is computed "
                        "already",
                    ))  # fmt: skip
                    continue
                st.hours.setdefault(hour, {})[metric] = float(batch.value[r])
        return self.flush(watermark)

    def flush(self, watermark: int) -> list[tuple[str, str, int, float]]:
        """Compute every hour that is complete at ``watermark`` (ms)."""
        out: list[tuple[str, str, int, float]] = []
        for station, st in self._state.items():
            pending = sorted(h for h in st.hours if h > st.done)
            newest = max(st.hours, default=st.done)
            for hour in pending:
                complete = hour < newest or hour + HOUR_MS + self.lateness_ms <= watermark
                if not complete:
                    break
                result = self._compute(station, st, hour)
                st.done = hour
                if result is not None:
                    out.append((station, self.metric, hour, result.aqi))
                    if self.record is not None:
                        self.record.append(result)
            for old in [h for h in st.hours if h <= st.done - _HISTORY_H * HOUR_MS]:
                del st.hours[old]
        return out

    def _compute(self, station: str, st: _Station, hour: int) -> AqiHour | None:
        def series(metric: str, hours: int) -> list[float]:
            return [
                st.hours.get(hour - k * HOUR_MS, {}).get(metric, math.nan) for k in range(hours)
            ]

        now = st.hours.get(hour, {})

        def moving(metric: str, reported: str | None, hours: int, min_valid: int) -> float:
            if reported is not None and not math.isnan(now.get(reported, math.nan)):
                return now[reported]
            return _mean(series(metric, hours), min_valid)

        result = realtime_aqi(
            pm2_5_24h=moving("pm2_5", "pm2_5_24h", 24, 20),
            pm10_24h=moving("pm10", "pm10_24h", 24, 20),
            so2_1h=now.get("so2", math.nan),
            no2_1h=now.get("no2", math.nan),
            co_1h=now.get("co", math.nan),
            o3_1h=now.get("o3", math.nan),
            o3_8h=moving("o3", None, 8, 6),
            so2_24h=moving("so2", None, 24, 20),
        )
        aqi = float(result.aqi[0])
        if math.isnan(aqi):
            return None
        primary = tuple(sorted(k for k, flags in result.primary.items() if bool(flags[0])))
        return AqiHour(station, hour, aqi, primary)

    def snapshot(self) -> dict[str, Any]:
        return {
            s: {"done": st.done, "hours": {str(h): v for h, v in st.hours.items()}}
            for s, st in self._state.items()
        }

    def restore(self, saved: dict[str, Any]) -> None:
        self._state = {
            s: _Station({int(h): dict(v) for h, v in d["hours"].items()}, int(d["done"]))
            for s, d in saved.items()
        }

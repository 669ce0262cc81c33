"""Hourly AQI derived from pollutant readings (HJ 633), by the method each station uses.

Input readings per air-quality station, one per pollutant and hour, stamped with the
hour (ms, UTC): ``pm2_5``, ``pm10``, ``so2``, ``no2``, ``o3`` in µg/m³ and ``co`` in
mg/m³ (1-h values), and optionally ``pm2_5_24h``, ``pm10_24h`` and ``o3_8h`` when the
analyser or the platform reports the moving means itself. Output: one ``aqi`` reading
per station and hour, which rules then treat like any measured metric, and a record of
the hour (:class:`AqiHour`: AQI, primary pollutant(s), what was missing).

Methods (``engine.contracts.ruleset.AqiMethod``, a rule's ``aqi_method``; ``shared/domain/FACTS.md``
§3.2), both with SO2, NO2, CO and O3 on the 1-h value and O3 also on the 8-h moving mean:

- ``hj633_24h``: PM2.5 and PM10 on their 24-h moving means (current real-time practice;
  Beijing's published AQI);
- ``cnemc_hourly``: PM2.5 and PM10 on the 1-h value read against the 24-h breakpoints
  (CNEMC's national real-time release, and the 2012 text of HJ 633).

A moving mean (hours X-23..X for PM, X-7..X for O3) is the engine's own mean of the
hourly values when it has every hour of the window: unrounded, it is the exact value. A
window the engine saw only in part takes the station's reported mean when there is one
(the station computed it over hours the engine did not get), else the engine's mean of
at least 20 of 24 (PM) or 6 of 8 (O3) hours (HJ 663 validity), else it is missing. A
1-h SO2 above 800 µg/m³ falls back to the SO2 24-h mean. The arithmetic is
``engine.evaluation.kernels.aqi``.

**Incomplete AQI.** An hour is incomplete when an input of its method is missing (a
pollutant not reported, a moving mean without enough hours). The AQI is the maximum of
the sub-indices, so an incomplete AQI is a lower bound of the true one: it may say the
air got worse, never that it got better. Such an hour reaches the rules only when it is
at least the station's last AQI passed to them; otherwise the rules get NaN for the hour
(the station stays heard, no window or level moves). So an AQI computed without a
pollutant never lowers or clears a level the complete AQI raised. The record (``vigil
replay --metrics-out``) keeps every hour with what it lacked, and
:meth:`AqiDeriver.missing_between` names the pollutants missing from the incomplete
hours passed to the rules, for the alerts they take part in.

An hour is computed once it is complete: when a reading of a later hour arrives for that
station, or when the partition's watermark passes the hour's end plus the lateness.
This stage is plain Python over station-hours, not readings of the hot path: an AQ
station sends a handful of values an hour.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.contracts.batch import TelemetryBatch
from engine.contracts.ruleset import AqiMethod
from engine.evaluation.kernels.aqi import realtime_aqi

__all__ = ["POLLUTANTS", "AqiDeriver", "AqiHour"]

HOUR_MS = 3_600_000
POLLUTANTS = ("pm2_5", "pm2_5_24h", "pm10", "pm10_24h", "so2", "no2", "co", "o3", "o3_8h")
_HISTORY_H = 24
NAN = math.nan


@dataclass(frozen=True)
class AqiHour:
    station: str
    hour: int  # ms, start of the hour
    aqi: float  # the AQI of the inputs present (a lower bound when ``missing``)
    primary: tuple[str, ...]  # empty when AQI <= 50
    missing: tuple[str, ...] = ()  # inputs of the method it lacked: incomplete when any

    @property
    def detail(self) -> str:
        """``pm2_5``, or ``pm2_5; incomplete: no pm10_24h`` (``--metrics-out``)."""
        primary = "+".join(self.primary)
        if not self.missing:
            return primary
        return f"{primary}; incomplete: no {'+'.join(self.missing)}"


@dataclass
class _Station:
    hours: dict[int, dict[str, float]] = field(default_factory=dict)  # hour -> metric -> value
    done: int = -(2**62)  # the last hour computed
    passed: float = NAN  # the last AQI the rules got (NaN: none yet)
    #: Incomplete hours the rules got: hour -> the inputs it lacked.
    incomplete: dict[int, tuple[str, ...]] = field(default_factory=dict)


def _mean(values: list[float]) -> tuple[float, int]:
    valid = [v for v in values if not math.isnan(v)]
    return (sum(valid) / len(valid) if valid else NAN), len(valid)


class AqiDeriver:
    """Per-station hourly buffers -> AQI readings, in event-time order per station.

    ``methods``: station -> its AQI method. ``keep_ms``: how long the incomplete hours
    passed to the rules are remembered for :meth:`missing_between` (the longest window
    of a rule on ``aqi`` plus the lateness).
    """

    metric = "aqi"

    def __init__(
        self, methods: Mapping[str, AqiMethod], lateness_ms: int, keep_ms: int = 0
    ) -> None:
        self.methods = dict(methods)
        self.lateness_ms = lateness_ms
        self.keep_ms = keep_ms
        self._state: dict[str, _Station] = {}
        #: Pollutant readings for an hour already computed: (station, metric, ts, value,
        #: reason), for the dead-letter topic; the processor drains them.
        self.rejected: list[tuple[str, str, int, float, str]] = []
        #: AQI hours computed since the last drain (for `vigil replay --metrics-out`);
        #: None when nobody collects them.
        self.record: list[AqiHour] | None = None

    @property
    def stations(self) -> Iterable[str]:
        return self.methods.keys()

    def feed(self, batch: TelemetryBatch, watermark: int) -> list[tuple[str, str, int, float]]:
        """Take a batch's pollutant readings; returns the AQI readings of completed hours."""
        wanted = [i for i, m in enumerate(batch.metrics) if m in POLLUTANTS]
        if wanted:
            rows = np.flatnonzero(np.isin(batch.metric_idx, wanted))
            for r in rows.tolist():
                station = batch.stations[int(batch.station_idx[r])]
                if station not in self.methods:
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
        """Compute every hour that is complete at ``watermark`` (ms); returns the AQI
        readings for the rules (NaN for an incomplete hour that would lower the AQI)."""
        out: list[tuple[str, str, int, float]] = []
        for station, st in self._state.items():
            # The rules have taken the hours up to `done`: every window that can hold an
            # hour before `done - keep_ms` has closed, so its incomplete mark is done with.
            for old in [h for h in st.incomplete if h < st.done - self.keep_ms]:
                del st.incomplete[old]
            pending = sorted(h for h in st.hours if h > st.done)
            newest = max(st.hours, default=st.done)
            for hour in pending:
                complete = hour < newest or hour + HOUR_MS + self.lateness_ms <= watermark
                if not complete:
                    break
                result = self._compute(station, st, hour)
                st.done = hour
                if result is None:
                    continue
                if self.record is not None:
                    self.record.append(result)
                out.append((station, self.metric, hour, self._for_rules(st, result)))
            for old in [h for h in st.hours if h <= st.done - _HISTORY_H * HOUR_MS]:
                del st.hours[old]
        return out

    @staticmethod
    def _for_rules(st: _Station, result: AqiHour) -> float:
        """The hour's value for the rules: an incomplete AQI below the last one passed
        is NaN (a lower bound cannot say the air got better)."""
        if result.missing:
            if result.aqi < st.passed:
                return NAN
            st.incomplete[result.hour] = result.missing
        st.passed = result.aqi
        return result.aqi

    def missing_between(self, station: str, first: int, last: int) -> tuple[str, ...]:
        """Inputs missing from the incomplete hours in ``first..last`` (ms, inclusive)
        that the rules got for ``station``; empty when all were complete."""
        st = self._state.get(station)
        if st is None:
            return ()
        found = {m for h, ms in st.incomplete.items() if first <= h <= last for m in ms}
        return tuple(sorted(found))

    def _compute(self, station: str, st: _Station, hour: int) -> AqiHour | None:
        now = st.hours.get(hour, {})

        def moving(metric: str, reported: str | None, hours: int, min_valid: int) -> float:
            own, n = _mean(
                [st.hours.get(hour - k * HOUR_MS, {}).get(metric, NAN) for k in range(hours)]
            )
            if n == hours:
                return own  # every hour seen: the exact, unrounded mean
            given = now.get(reported, NAN) if reported is not None else NAN
            if not math.isnan(given):
                return given
            return own if n >= min_valid else NAN

        if self.methods.get(station) == "cnemc_hourly":
            pm = {"pm2_5": now.get("pm2_5", NAN), "pm10": now.get("pm10", NAN)}
        else:
            pm = {
                "pm2_5_24h": moving("pm2_5", "pm2_5_24h", 24, 20),
                "pm10_24h": moving("pm10", "pm10_24h", 24, 20),
            }
        inputs = {
            **pm,
            "so2": now.get("so2", NAN),
            "no2": now.get("no2", NAN),
            "co": now.get("co", NAN),
            "o3": now.get("o3", NAN),
            "o3_8h": moving("o3", "o3_8h", 8, 6),
        }
        so2_24h = NAN
        if inputs["so2"] > 800:  # no 1-h IAQI above 800: the 24-h mean is needed
            so2_24h = moving("so2", None, 24, 20)
            inputs["so2_24h"] = so2_24h
        pm2_5, pm10 = pm.values()
        result = realtime_aqi(
            pm2_5_24h=pm2_5, pm10_24h=pm10, so2_1h=inputs["so2"], no2_1h=inputs["no2"],
            co_1h=inputs["co"], o3_1h=inputs["o3"], o3_8h=inputs["o3_8h"], so2_24h=so2_24h,
        )  # fmt: skip
        aqi = float(result.aqi[0])
        if math.isnan(aqi):
            return None
        primary = tuple(sorted(k for k, flags in result.primary.items() if bool(flags[0])))
        missing = tuple(sorted(k for k, v in inputs.items() if math.isnan(v)))
        return AqiHour(station, hour, aqi, primary, missing)

    def snapshot(self) -> dict[str, Any]:
        return {
            s: {
                "done": st.done,
                "hours": {str(h): v for h, v in st.hours.items()},
                "passed": st.passed,
                "incomplete": {str(h): list(m) for h, m in st.incomplete.items()},
            }
            for s, st in self._state.items()
        }

    def restore(self, saved: dict[str, Any]) -> None:
        self._state = {
            s: _Station(
                {int(h): dict(v) for h, v in d["hours"].items()},
                int(d["done"]),
                float(d.get("passed", NAN)),
                {int(h): tuple(m) for h, m in d.get("incomplete", {}).items()},
            )
            for s, d in saved.items()
        }

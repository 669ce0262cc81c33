"""Per-reading derived metrics compiled from rule files (``engine.ruleset.DerivedMetric``).

- ``pressure_head``: piezometric level (m) = sensor elevation (m) + pore pressure (kPa)
  / 9.81 (``engine.kernels.seepage``); one output reading per input, same time.
- ``linear_residual``: ``source - (intercept + slope * against)``, with ``against`` the
  latest reading of that metric at the station's reservoir (``against_stations``) at
  or before the source reading's time. The reservoir must report into the same partition
  as its instruments to be seen here; a source reading with no reservoir level yet
  gives no residual.

Vectorised per batch: NumPy over the rows of the source metric, Python only per station.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.batch import TelemetryBatch
from engine.kernels.seepage import piezometric_level_m
from engine.ruleset import DerivedMetric

__all__ = ["FormulaDeriver"]

Reading = tuple[str, str, int, float]


class FormulaDeriver:
    """Applies every compiled ``DerivedMetric`` to a batch; keeps the reservoir levels."""

    def __init__(self, derived: tuple[DerivedMetric, ...]) -> None:
        self.derived = derived
        self._rows = [{s: i for i, s in enumerate(d.stations)} for d in derived]
        #: (station, metric) -> (ts, value): the latest "against" reading seen
        self.latest: dict[tuple[str, str], tuple[int, float]] = {}
        self._against = {(s, d.against) for d in derived if d.against for s in d.against_stations}

    def feed(self, batch: TelemetryBatch) -> list[Reading]:
        if not self.derived or not len(batch):
            return []
        self._remember_against(batch)
        out: list[Reading] = []
        for d, rows in zip(self.derived, self._rows, strict=True):
            if d.source not in batch.metrics:
                continue
            m = batch.metrics.index(d.source)
            sel = np.flatnonzero(batch.metric_idx == m)
            for r in sel.tolist():
                station = batch.stations[int(batch.station_idx[r])]
                i = rows.get(station)
                if i is None:
                    continue
                value = self._value(d, i, int(batch.ts[r]), float(batch.value[r]))
                if value is not None and np.isfinite(value):
                    out.append((station, d.metric, int(batch.ts[r]), value))
        return out

    def _remember_against(self, batch: TelemetryBatch) -> None:
        wanted = [i for i, m in enumerate(batch.metrics) if any(m == a for _, a in self._against)]
        if not wanted:
            return
        for r in np.flatnonzero(np.isin(batch.metric_idx, wanted)).tolist():
            s, mi, t = int(batch.station_idx[r]), int(batch.metric_idx[r]), int(batch.ts[r])
            key = (batch.stations[s], batch.metrics[mi])
            if key in self._against and t >= self.latest.get(key, (-(2**62), 0.0))[0]:
                self.latest[key] = (t, float(batch.value[r]))

    def _value(self, d: DerivedMetric, i: int, ts: int, v: float) -> float | None:
        if d.op == "pressure_head":
            return float(piezometric_level_m(d.sensor_elevation[i], v))
        assert d.against is not None and d.intercept is not None and d.slope is not None
        seen = self.latest.get((d.against_stations[i], d.against))
        if seen is None or seen[0] > ts:
            return None
        return v - (float(d.intercept[i]) + float(d.slope[i]) * seen[1])

    def snapshot(self) -> dict[str, Any]:
        return {f"{s}\x1f{m}": list(v) for (s, m), v in self.latest.items()}

    def restore(self, saved: dict[str, Any]) -> None:
        self.latest = {
            tuple(k.split("\x1f", 1)): (int(v[0]), float(v[1]))  # type: ignore[misc]
            for k, v in saved.items()
        }

"""Per-reading derived metrics compiled from rule files
(``engine.contracts.ruleset.DerivedMetric``).

- ``pressure_head``: piezometric level (m) = sensor elevation (m) + pore pressure (kPa)
  / 9.81 (``engine.evaluation.kernels.seepage``); one output reading per input, same time.
- ``linear_residual``: ``source - (intercept + slope * against)``, with ``against`` the
  latest reading of that metric at the station's reservoir (``against_stations``) at
  or before the source reading's time. The reservoir must report into the same partition
  as its instruments to be seen here; a source reading with no reservoir level yet
  gives no residual.

Batching does not change the result: a batch's readings of the formulas' inputs are
taken in event time (stably: equal times keep their arrival order), exactly as if they
had come one batch each. A reservoir level is known from the moment its reading is
taken; each reservoir's levels of the last ``HISTORY_MS`` before its newest are kept,
so that a pressure reading a little older than the newest level (a piezometer that
reports after its reservoir) still finds the level at or before its own time. A
pressure reading older than every level kept, or than a level that has not arrived
yet, gives no residual.
"""

from __future__ import annotations

from bisect import bisect_right, insort_right
from typing import Any

import numpy as np

from engine.contracts.batch import TelemetryBatch
from engine.contracts.ruleset import DerivedMetric
from engine.evaluation.kernels.seepage import piezometric_level_m

__all__ = ["HISTORY_MS", "FormulaDeriver"]

Reading = tuple[str, str, int, float]

#: How far behind a reservoir's newest level (ms of event time) its older levels are kept.
#: A day: dam instruments report hourly, a reservoir every few minutes (<= ~300 levels).
HISTORY_MS = 24 * 3_600_000


def _ts(level: tuple[int, float]) -> int:
    return level[0]


class FormulaDeriver:
    """Applies every compiled ``DerivedMetric`` to a batch; keeps the reservoir levels."""

    def __init__(self, derived: tuple[DerivedMetric, ...]) -> None:
        self.derived = derived
        #: source metric -> [(formula, station -> row of the formula)]
        self._by_source: dict[str, list[tuple[DerivedMetric, dict[str, int]]]] = {}
        for d in derived:
            rows = {s: i for i, s in enumerate(d.stations)}
            self._by_source.setdefault(d.source, []).append((d, rows))
        self._against = {(s, d.against) for d in derived if d.against for s in d.against_stations}
        self._inputs = set(self._by_source) | {m for _, m in self._against}
        #: (station, metric) -> its "against" levels (ts ms, value), in event-time order
        #: (equal times in arrival order), the last ``HISTORY_MS`` before the newest.
        self.history: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def feed(self, batch: TelemetryBatch) -> list[Reading]:
        """The derived readings of ``batch`` (station, metric, ts ms, value)."""
        if not self.derived or not len(batch):
            return []
        wanted = [i for i, m in enumerate(batch.metrics) if m in self._inputs]
        if not wanted:
            return []  # the common case on a flood or air-quality partition: one isin
        rows = np.flatnonzero(np.isin(batch.metric_idx, wanted))
        rows = rows[np.argsort(batch.ts[rows], kind="stable")]
        out: list[Reading] = []
        for s, m, t, v in zip(
            batch.station_idx[rows].tolist(),
            batch.metric_idx[rows].tolist(),
            batch.ts[rows].tolist(),
            batch.value[rows].tolist(),
            strict=True,
        ):
            station, metric = batch.stations[s], batch.metrics[m]
            if (station, metric) in self._against:
                self._remember((station, metric), t, v)
            for d, formula_rows in self._by_source.get(metric, ()):
                i = formula_rows.get(station)
                if i is None:
                    continue
                value = self._value(d, i, t, v)
                if value is not None and np.isfinite(value):
                    out.append((station, d.metric, t, value))
        return out

    def _remember(self, key: tuple[str, str], ts: int, value: float) -> None:
        levels = self.history.setdefault(key, [])
        insort_right(levels, (ts, value), key=_ts)
        # Drop what no reading can need any more: keep the newest level at or before
        # the horizon, it is the one a reading at the horizon pairs with.
        cut = bisect_right(levels, levels[-1][0] - HISTORY_MS, key=_ts) - 1
        if cut > 0:
            del levels[:cut]

    def _value(self, d: DerivedMetric, i: int, ts: int, v: float) -> float | None:
        if d.op == "pressure_head":
            return float(piezometric_level_m(d.sensor_elevation[i], v))
        assert d.against is not None and d.intercept is not None and d.slope is not None
        levels = self.history.get((d.against_stations[i], d.against), [])
        at = bisect_right(levels, ts, key=_ts) - 1
        if at < 0:
            return None
        return v - (float(d.intercept[i]) + float(d.slope[i]) * levels[at][1])

    def snapshot(self) -> dict[str, Any]:
        return {f"{s}\x1f{m}": [list(x) for x in v] for (s, m), v in self.history.items()}

    def restore(self, saved: dict[str, Any]) -> None:
        """Load ``snapshot()``; a checkpoint from before the history kept only the newest
        level of each reservoir, as ``[ts, value]``."""
        self.history = {}
        for k, v in saved.items():
            station, metric = k.split("\x1f", 1)
            levels = [v] if v and not isinstance(v[0], list) else v
            self.history[(station, metric)] = [(int(t), float(x)) for t, x in levels]

"""Early-firing runner: ``engine.evaluation.kernels.tumbling_levels`` for max/above and min/below.

The kernel does the rule's QC and sensor health in the same pass as the window and
levels, so a reading touches one cache line of state (see the kernel's docstring).

Thresholds that vary with the date (``ThresholdRule.calendar``) live in the blocks as
the constant ones do: the runner writes those of a period (a local day) into every
block before the kernel sees readings or window ends of that period, cutting a batch
where a period ends. A reading is judged with the thresholds of its own time; a window
with those of its last instant (``end - 1``), whether the watermark closes it or the
sensor's next reading does (the runner closes it first, with its own period's).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.recfunctions import repack_fields

from engine.contracts.ruleset import ThresholdRule
from engine.evaluation.health import (
    FAIL_AFTER,
    HealthChange,
    drops_suspect,
    health_changes,
    qc_params,
)
from engine.evaluation.kernels import health as hk
from engine.evaluation.kernels import tumbling_levels as kernel
from engine.evaluation.kernels._common import NO_TS
from engine.evaluation.kernels._tumbling_state import CLOSED_BIT
from engine.evaluation.kernels.qc import QC_STATE_DTYPE, QCParams, new_qc_state, time_limits
from engine.evaluation.runners.base import (
    RawTransition,
    Rejected,
    SensorIndex,
    gathered_thresholds,
    periods,
    signature,
)

__all__ = ["TumblingRunner"]

NEVER = int(np.iinfo(np.int64).max)
#: The state fields of a snapshot that does not list its own: those before
#: ``step_down: reading`` remembered its latest step-down (``down_ts``, ``down_from``).
V3_FIELDS = tuple(f for f in kernel.STATE_FIELDS if f not in ("down_ts", "down_from"))


def _saved_dtype(fields: tuple[str, ...]) -> np.dtype[np.void]:
    """A snapshot's record: the state fields of a block, packed (no thresholds, no padding)."""
    return repack_fields(kernel.BLOCK_DTYPE[list(fields)])


def _params(rule: ThresholdRule, qc: QCParams, lateness_ms: int) -> kernel.Params:
    """The kernel's constants; the engine's QC limits are rule-wide (length-1 arrays)."""
    lo, hi, slo, shi, spike, rate = (
        float(a[0]) for a in (qc.fail_lo, qc.fail_hi, qc.suspect_lo, qc.suspect_hi, qc.spike,
                              qc.rate_per_h)
    )  # fmt: skip
    return kernel.make_params(
        rule.direction, rule.deadband, rule.window_ms, rule.for_ms, FAIL_AFTER,
        (lo, hi, slo, shi, spike, rate, qc.flat_eps, qc.flat_suspect_n, qc.flat_fail_n),
        lateness_ms, drops_suspect(rule), on_reading=rule.step_down == "reading",
        shift_ms=rule.kernel_shift_ms, right=int(rule.window_closed_right),
    )  # fmt: skip


class TumblingRunner:
    def __init__(self, rule: ThresholdRule, lateness_ms: int) -> None:
        self.sensors = SensorIndex(rule)
        self.lateness_ms = lateness_ms
        self.state = kernel.new_state(0)  # thresholds live in each sensor's block
        self.qc = qc_params(rule)
        self.params = _params(rule, self.qc, lateness_ms)
        #: No open window ends before this (ms): closing below it is a no-op, so the
        #: O(sensors) scan runs once per window period, not once per batch.
        self.next_close = NEVER
        #: Rows whose thresholds are written: the stations indexed so far.
        self._with_thresholds = 0
        self.rejected: list[Rejected] = []
        #: The kernel's output arrays, kept between batches: allocating them per batch
        #: cost 27 µs (a fresh mapping per array), 5 % of a 10,000-reading batch.
        self._out = kernel.outputs(0)
        #: The rule's thresholds in the blocks, and the start (ms) of their period when
        #: they vary with the date (None: the rule's constant ones, or none loaded).
        self._table = rule.thresholds
        self._period: int | None = None

    @property
    def rule(self) -> ThresholdRule:
        return self.sensors.rule

    def grow(self, n: int) -> None:
        size = len(self.state)
        if n > size:
            state = kernel.new_state(max(n, 2 * size, 16))
            state[:size] = self.state
            self.state = state
        # Every newly indexed station takes its thresholds now, whether or not the
        # state had to grow (a station first seen while capacity remained kept NaN
        # thresholds and never fired); only the new rows, never a pass over them all.
        done, n = self._with_thresholds, len(self.sensors.stations)
        if n > done:
            table = gathered_thresholds(self.sensors, n, done, self._table)
            kernel.set_thresholds(self.state[done:n], table)
            self._with_thresholds = n

    def rebind(self, rule: ThresholdRule) -> None:
        self.sensors.bind(rule)
        self.qc = qc_params(rule)
        self.params = _params(rule, self.qc, self.lateness_ms)
        self._table, self._period = rule.thresholds, None
        kernel.set_thresholds(self.state, gathered_thresholds(self.sensors, len(self.state)))

    def _load(self, begin: int, table: npt.NDArray[np.float64]) -> None:
        """Write the thresholds of the period that starts at ``begin`` (ms) into the
        blocks, unless they are there: O(sensors), once per period crossed."""
        if self._period == begin:
            return
        self._table, self._period = table, begin
        kernel.set_thresholds(
            self.state, gathered_thresholds(self.sensors, len(self.state), 0, table)
        )

    def _transitions(self, tr: tuple[npt.NDArray[Any], ...], n: int) -> list[RawTransition]:
        return [RawTransition(*row) for row in zip(*(a[:n].tolist() for a in tr), strict=True)]

    def apply(
        self,
        sensor: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint8],
        watermark: int,
        now_ms: int,
        partition_ms: int = NO_TS,
    ) -> tuple[list[RawTransition], list[HealthChange]]:
        calendar = self.rule.calendar
        if calendar is None or not len(ts):
            return self._apply(sensor, ts, value, quality, now_ms, partition_ms)
        transitions: list[RawTransition] = []
        changes: list[HealthChange] = []
        for a, b, begin, table in periods(calendar, ts):
            transitions += self._close_before(sensor[a:b], begin)
            self._load(begin, table)
            tr, hc = self._apply(sensor[a:b], ts[a:b], value[a:b], quality[a:b], now_ms,
                                 partition_ms)  # fmt: skip
            transitions += tr
            changes += hc
        return transitions, changes

    def _close_before(self, sensor: npt.NDArray[np.int32], begin: int) -> list[RawTransition]:
        """Close the open windows of ``sensor`` that end by ``begin`` (ms), each with the
        thresholds of its last instant: the sensor's next reading, of the period that
        starts at ``begin``, would close them with that period's."""
        calendar, w = self.rule.calendar, self.rule.window_ms
        assert calendar is not None
        if self.next_close > begin:  # no open window ends by then: the common case, O(1)
            return []
        last = self.state["last_ts"][sensor]
        due = (last != NO_TS) & (last - last % w + w <= begin)
        if not due.any():
            return []
        rows = np.unique(sensor[due])
        st = self.state[rows]
        rows = rows[~np.isnan(st["agg"]) & (st["levels"] & CLOSED_BIT == 0)]
        if not len(rows):
            return []
        sub = self.state[rows]
        out: list[RawTransition] = []
        first = int(sub["last_ts"].min()) // w * w + w
        while first <= begin:
            _, end, table = calendar.period(first - 1)
            kernel.set_thresholds(sub, gathered_thresholds(self.sensors, len(self.state), 0,
                                                           table)[rows])  # fmt: skip
            tr = kernel.transition_arrays(len(sub))
            n, first = kernel.close_windows(sub, self.params, min(begin, end), tr)
            tr[0][:n] = rows[tr[0][:n]]
            out += self._transitions(tr, n)
        self.state[rows] = sub
        self._period = None  # those blocks hold another period's thresholds now
        return out

    def _apply(
        self,
        sensor: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint8],
        now_ms: int,
        partition_ms: int,
    ) -> tuple[list[RawTransition], list[HealthChange]]:
        rule = self.rule
        if len(self._out[2][0]) < len(ts):
            self._out = kernel.outputs(len(ts))
        out = self._out
        limits = (*time_limits(self.qc, now_ms), hk.current_from(rule.stale_ms, partition_ms))
        n_tr, n_hc, n_late = kernel.process(
            self.state, self.params, limits, sensor, ts, value, quality, out
        )
        for r in out[2][0][:n_late].tolist():
            self.rejected.append(Rejected(
                int(sensor[r]), int(ts[r]), float(value[r]),
                f"late for rule {rule.rule_id}: its {rule.window_ms // 60_000}-min window "
                "closed already",
            ))  # fmt: skip
        if len(ts):
            first = int(ts.min())
            first_end = first - (first + rule.kernel_shift_ms) % rule.window_ms + rule.window_ms
            self.next_close = min(self.next_close, first_end)
        changes = health_changes(tuple(a[:n_hc] for a in out[1]))
        return self._transitions(out[0], n_tr), changes

    def close(self, watermark: int) -> list[RawTransition]:
        closing = watermark - self.lateness_ms
        if closing < self.next_close:
            return []
        calendar = self.rule.calendar
        if calendar is None:
            tr = kernel.transition_arrays(len(self.state))
            n, self.next_close = kernel.close_windows(self.state, self.params, closing, tr)
            return self._transitions(tr, n)
        out: list[RawTransition] = []
        while closing >= self.next_close:  # period by period of the windows' last instants
            begin, end, table = calendar.period(self.next_close - 1)
            self._load(begin, table)
            tr = kernel.transition_arrays(len(self.state))
            n, self.next_close = kernel.close_windows(
                self.state, self.params, min(closing, end), tr
            )
            out += self._transitions(tr, n)
        return out

    def check_silence(self, watermark: int) -> list[HealthChange]:
        stale_ms = self.rule.stale_ms
        if stale_ms <= 0:
            return []
        due = kernel.silent_due(self.state, stale_ms, watermark)
        last = self.state["seen_ts"][due]
        k = len(due)
        return health_changes((
            due, np.full(k, kernel.SILENT), np.ones(k), last + stale_ms, last, np.full(k, np.nan)
        ))  # fmt: skip

    def health_snapshot(self) -> dict[str, Any]:
        st = self.state[: len(self.sensors.stations)]
        qc = new_qc_state(len(st))
        qc["last_value"], qc["last_ts"], qc["flat_run"] = (
            st["qc_value"],
            st["qc_ts"],
            st["flat_run"],
        )
        health = hk.new_health_state(len(st))
        bits = st["health"]
        health["last_ts"], health["fail_since"] = st["seen_ts"], st["fail_since"]
        health["fail_run"] = bits & kernel.RUN_CAP
        health["qc_alert"] = (bits & kernel.QC_ALERT_BIT) != 0
        health["silent"] = (bits & kernel.SILENT_BIT) != 0
        return {"qc": qc.tobytes(), "health": health.tobytes()}

    def adopt_health(self, stations: list[str], saved: dict[str, Any]) -> None:
        qc = np.frombuffer(saved["qc"], QC_STATE_DTYPE)
        health = np.frombuffer(saved["health"], hk.HEALTH_DTYPE)
        lut, _ = self.sensors.lookup(tuple(stations))
        self.grow(len(self.sensors.stations))
        rows, known = lut[lut >= 0], lut >= 0
        qc, health, st = qc[known], health[known], self.state
        st["qc_value"][rows], st["qc_ts"][rows] = qc["last_value"], qc["last_ts"]
        # Saturating, as the kernel counts: exact within ThresholdRule's limits.
        st["flat_run"][rows] = np.minimum(qc["flat_run"], kernel.FLAT_CAP)
        st["seen_ts"][rows], st["fail_since"][rows] = health["last_ts"], health["fail_since"]
        st["health"][rows] = (
            np.minimum(health["fail_run"], kernel.RUN_CAP)
            | np.where(health["qc_alert"], kernel.QC_ALERT_BIT, 0)
            | np.where(health["silent"], kernel.SILENT_BIT, 0)
        )

    def accepted(self, station: str) -> int:
        i = self.sensors.index.get(station)
        return 0 if i is None else int(self.state[i]["accepted"])

    def snapshot(self) -> dict[str, Any]:
        n = len(self.sensors.stations)
        return {
            "sig": signature(self.rule),
            "stations": self.sensors.stations,
            "fields": list(kernel.STATE_FIELDS),
            "state": repack_fields(self.state[list(kernel.STATE_FIELDS)][:n]).tobytes(),
        }

    def restore(self, saved: dict[str, Any]) -> None:
        # A field the snapshot lacks keeps its fresh value (no step-down remembered).
        fields = tuple(saved.get("fields", V3_FIELDS))
        saved_state = np.frombuffer(saved["state"], dtype=_saved_dtype(fields))
        lut, _ = self.sensors.lookup(tuple(saved["stations"]))
        self.grow(len(self.sensors.stations))
        known = lut >= 0
        for name in fields:
            self.state[name][lut[known]] = saved_state[name][known]
        self.next_close = kernel.earliest_open_end(
            self.state, self.rule.window_ms, self.rule.kernel_shift_ms
        )

"""Per-partition rule evaluation: telemetry batches in, alert events out.

A ``PartitionProcessor`` owns the kernel state of one telemetry partition: a runner per
rule (``engine.evaluation.runners``), each with a dense sensor index (station -> row, grown on
first sight) and its kernel's state arrays. All per-reading work happens in numba
kernels; Python touches each batch's unique stations and each transition, never each
reading.

Exactly-once state: the processor remembers the offset after the last batch it applied
(``next_offset``) and ignores a batch below it, so replaying the log after a restart
from an older committed offset cannot count a reading twice. ``snapshot``/``restore``
carry that offset with the state; the transport stores the snapshot atomically with the
consumer's committed offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import msgpack
import numpy as np
import numpy.typing as npt

from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch, Tick
from engine.contracts.ruleset import RuleSet
from engine.evaluation.compound import (
    CompoundState,
    clause_rules,
    parse_clause,
)
from engine.evaluation.derive.aqi import AqiDeriver
from engine.evaluation.derive.formulas import FormulaDeriver
from engine.evaluation.events import compound_event, health_event, level_event
from engine.evaluation.health import HealthChange
from engine.evaluation.idle import IdleClock
from engine.evaluation.runners.base import RawTransition, Runner, signature
from engine.evaluation.runners.factory import runner_for
from engine.evaluation.runners.tumbling import TumblingRunner

__all__ = ["PartitionProcessor"]

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 3  # 3: health state inside each rule's; the early-firing record
NO_TIME = int(np.iinfo(np.int64).min)
FUTURE_MS = 5 * 60_000  # a device clock this far ahead of the gateway's is wrong


class PartitionProcessor:
    """Runs a ``RuleSet`` over the telemetry batches of one partition.

    ``lateness_ms``: a window closes once the partition has seen a reading this much
    past the window's end (event time), so slightly late readings still count.
    """

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        lateness_ms: int = 60_000,
        early_firing: bool = True,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.lateness_ms = lateness_ms
        self.early_firing = early_firing
        #: Wall clock (ms) for the live engine: readings stamped more than
        #: FUTURE_MS ahead of it fail QC and cannot drag the watermark forward. None
        #: (replays) judges time by the data alone.
        self.clock = clock
        self._compound: dict[str, CompoundState] = {}
        #: Clause changes of compound rules not yet applied: (ms, holds, compound rule id,
        #: station, clause). A batch's runners run metric by metric, so they are applied
        #: once per batch in event-time order, whatever order the metrics came in.
        self._clauses: list[tuple[int, bool, str, str, int]] = []
        self.formulas = FormulaDeriver(())
        #: Readings a rule could not take: (station, metric, ts, value, reason).
        self.rejected: list[tuple[str, str, int, float, str]] = []
        self.next_offset = 0
        self.watermark = NO_TIME  # the latest event time seen (ms)
        self.idle = IdleClock()  # wall time the watermark has stood still, from ticks
        self._runners: dict[str, Runner] = {}
        self.aqi: AqiDeriver | None = None
        self.ruleset = ruleset
        self.swap_rules(ruleset)

    # ---- rules -------------------------------------------------------------------------

    def swap_rules(self, ruleset: RuleSet) -> None:
        """Install a new rule set between batches, keeping the state of unchanged rules."""
        kept: dict[str, Runner] = {}
        clauses = [c for compound in ruleset.compound for c in clause_rules(compound)]
        for rule in (*ruleset.rules, *clauses):
            old = self._runners.get(rule.rule_id)
            if old is not None and signature(old.sensors.rule) == signature(rule):
                old.rebind(rule)
                kept[rule.rule_id] = old
            else:
                new = runner_for(rule, self.lateness_ms, early_firing=self.early_firing)
                if old is not None:  # the window changed: QC and health state carry over
                    new.adopt_health(old.sensors.stations, old.health_snapshot())
                kept[rule.rule_id] = new
        self._runners = kept
        self._compound = {
            c.rule_id: self._compound.get(c.rule_id) or CompoundState(c) for c in ruleset.compound
        }
        for c in ruleset.compound:
            self._compound[c.rule_id].rule = c
        self.ruleset = ruleset
        history = self.formulas.history
        self.formulas = FormulaDeriver(ruleset.derived)
        self.formulas.history = history
        # AQI is derived for the stations that rules on `aqi` select, by their method
        # (`rules check` refuses two methods for one station).
        aqi_rules = [r for r in ruleset.rules if r.metric == AqiDeriver.metric]
        methods = {s: r.aqi_method for r in reversed(aqi_rules) for s in r.stations}
        keep_ms = max((r.window_ms for r in aqi_rules), default=0) + self.lateness_ms
        if not methods:
            self.aqi = None
        elif self.aqi is None:
            self.aqi = AqiDeriver(methods, self.lateness_ms, keep_ms)
        else:
            self.aqi.methods, self.aqi.keep_ms = methods, keep_ms

    def runner(self, rule_id: str) -> Runner:
        return self._runners[rule_id]

    # ---- processing ----------------------------------------------------------------------

    def process(self, batch: TelemetryBatch, offset: int) -> list[AlertEvent]:
        """Apply one batch read at ``offset``; returns the level transitions it caused."""
        if offset < self.next_offset:
            return []  # already applied before a restart: replaying must not double-count
        events: list[AlertEvent] = []
        if len(batch):
            watermark = max(self.watermark, self._newest(batch))
            events += self._run_rules(batch, watermark)
            formulas = self.formulas.feed(batch)
            if formulas:
                events += self._run_rules(TelemetryBatch.from_rows(formulas), watermark)
            if self.aqi is not None:
                derived = self.aqi.feed(batch, watermark)
                self.rejected += self.aqi.rejected
                self.aqi.rejected.clear()
                if derived:
                    events += self._run_rules(TelemetryBatch.from_rows(derived), watermark)
            self.watermark = watermark
            events += self.close_windows(watermark)
        elif batch.tick is not None:
            events += self.on_tick(batch.tick)
        self.next_offset = offset + 1
        return events

    def _newest(self, batch: TelemetryBatch) -> int:
        """The batch's latest event time (ms) that may move the watermark: live, only a
        reading the clock check passes (one stamped past the gateway's clock plus
        FUTURE_MS fails QC, and clipping it to that limit still dragged every window and
        silence clock minutes ahead, making on-time readings late)."""
        ts = batch.ts
        if self.clock is not None:
            ts = ts[ts <= self.clock() + FUTURE_MS]
        return int(ts.max()) if len(ts) else NO_TIME

    def on_tick(self, tick: Tick) -> list[AlertEvent]:
        """Silence on the wall clock: the sensors silent for their rule's ``stale`` at the
        watermark extrapolated by the wall time it has stood still (``engine.evaluation.idle``).

        Their alerts are the usual ``<rule>#silent`` ones, dated ``last reading +
        stale`` in event time, and the next reading clears them. Nothing else moves on
        wall time: windows close and levels change on readings only.
        """
        idle_ms = self.idle.tick(self.watermark, tick)
        if not idle_ms or self.watermark == NO_TIME:
            return []
        events: list[AlertEvent] = []
        for runner in self._runners.values():
            events += self._health_events(runner, runner.check_silence(self.watermark + idle_ms))
        return events

    def _run_rules(self, batch: TelemetryBatch, watermark: int) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        for metric_i, metric in enumerate(batch.metrics):
            runners = [r for r in self._runners.values() if r.sensors.rule.metric == metric]
            if not runners:
                continue
            rows = np.flatnonzero(batch.metric_idx == metric_i)
            # Event-time order per sensor; stable so equal times keep arrival order.
            rows = rows[np.argsort(batch.ts[rows], kind="stable")]
            for runner in runners:
                events += self._apply(runner, batch, rows, watermark)
        return events

    def _apply(
        self,
        runner: Runner,
        batch: TelemetryBatch,
        rows: npt.NDArray[np.intp],
        watermark: int,
    ) -> list[AlertEvent]:
        lut, new = runner.sensors.lookup(batch.stations)
        if new:
            runner.grow(len(runner.sensors.stations))
        sensor = lut[batch.station_idx[rows]]
        keep = sensor >= 0
        rows, sensor = rows[keep], sensor[keep]
        ts, value = batch.ts[rows], batch.value[rows]
        now = self.clock() if self.clock is not None else watermark
        # ``self.watermark`` is still the partition's event time before this batch.
        raw, changes = runner.apply(
            sensor, ts, value, batch.quality[rows], watermark, now, self.watermark
        )
        if runner.rejected and parse_clause(runner.sensors.rule.rule_id) is not None:
            runner.rejected.clear()  # a compound's clause: its standalone rule reports them
        if runner.rejected:
            stations, metric = runner.sensors.stations, runner.sensors.rule.metric
            self.rejected += [(stations[r.sensor], metric, r.ts, r.value, r.reason)
                              for r in runner.rejected]  # fmt: skip
            runner.rejected.clear()
        return self._health_events(runner, changes) + self._events(runner, raw)

    def close_windows(self, watermark: int) -> list[AlertEvent]:
        """Close windows whose end + lateness <= ``watermark`` (ms), silent sensors too."""
        events: list[AlertEvent] = []
        if self.aqi is not None:
            derived = self.aqi.flush(watermark)
            if derived:
                events += self._run_rules(TelemetryBatch.from_rows(derived), watermark)
        for runner in self._runners.values():
            events += self._events(runner, runner.close(watermark))
            events += self._health_events(runner, runner.check_silence(watermark))
        events += self._apply_clauses()
        for state in self._compound.values():
            events += [compound_event(state.rule, ch) for ch in state.due(watermark)]
        return events

    def _apply_clauses(self) -> list[AlertEvent]:
        """Apply the pending clause changes in event time (a fall before a rise at the
        same ms: a combination does not hold for an instant)."""
        events: list[AlertEvent] = []
        pending, self._clauses = sorted(self._clauses), []
        for at, holds, rule_id, station, k in pending:
            state = self._compound.get(rule_id)
            if state is not None:
                events += [
                    compound_event(state.rule, ch) for ch in state.clause(station, k, holds, at)
                ]
        return events

    def _events(self, runner: Runner, raw: list[RawTransition]) -> list[AlertEvent]:
        rule = runner.sensors.rule
        stations = runner.sensors.stations
        clause = parse_clause(rule.rule_id)
        if clause is None:
            events = [level_event(rule, stations[tr.sensor], tr) for tr in raw]
            if self.aqi is not None and rule.metric == AqiDeriver.metric:
                events = [
                    self._mark_incomplete(runner, tr, e) for tr, e in zip(raw, events, strict=True)
                ]
            return events
        # An internal clause of a compound rule: it only flips the clause's truth, once
        # the batch's other clauses are in (``_apply_clauses``).
        self._clauses += [
            (tr.at, tr.to_level > 0, clause[0], stations[tr.sensor], clause[1]) for tr in raw
        ]
        return []

    def _mark_incomplete(self, runner: Runner, tr: RawTransition, event: AlertEvent) -> AlertEvent:
        """An AQI alert decided by a window that held an incomplete AQI hour says so:
        label ``aqi_incomplete`` names the inputs that hour lacked
        (``engine.evaluation.derive.aqi``).

        The window: an early-firing escalation is decided by the readings of its window
        up to the one that crossed (``at``); every other transition by the window that
        ends at ``at``.
        """
        assert self.aqi is not None
        rule = runner.sensors.rule
        if isinstance(runner, TumblingRunner) and tr.to_level > tr.from_level:
            first, last = tr.at - tr.at % rule.window_ms, tr.at
        else:
            first, last = tr.at - rule.window_ms, tr.at - 1
        missing = self.aqi.missing_between(event.station, first, last)
        if not missing:
            return event
        return replace(event, labels={**event.labels, "aqi_incomplete": "+".join(missing)})

    def _health_events(self, runner: Runner, changes: list[HealthChange]) -> list[AlertEvent]:
        rule = runner.sensors.rule
        if parse_clause(rule.rule_id) is not None:
            return []  # a compound's clause: its standalone rule reports the gauge's health
        return [health_event(rule, runner.sensors.stations[ch.sensor], ch) for ch in changes]

    # ---- checkpoints ------------------------------------------------------------------

    def accepted(self, rule_id: str, station: str) -> int:
        """Readings of ``station`` the rule has counted (duplicates excluded)."""
        return self._runners[rule_id].accepted(station)

    def snapshot(self) -> bytes:
        """Serialise the state and ``next_offset`` (msgpack, raw state arrays)."""
        return msgpack.packb(
            {
                "v": SNAPSHOT_VERSION,
                "next_offset": self.next_offset,
                "watermark": self.watermark,
                "rules": {rid: r.snapshot() for rid, r in self._runners.items()},
                "aqi": None if self.aqi is None else self.aqi.snapshot(),
                "compound": {cid: c.snapshot() for cid, c in self._compound.items()},
                "formulas": self.formulas.snapshot(),
                "idle": self.idle.snapshot(),
            },
            use_bin_type=True,
        )

    def restore(self, blob: bytes) -> None:
        """Load a snapshot; rules whose window definition changed start afresh."""
        data = msgpack.unpackb(blob, raw=False)
        if data.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown processor snapshot version {data.get('v')!r}")
        self.next_offset = int(data["next_offset"])
        self.watermark = int(data["watermark"])
        if self.aqi is not None and data.get("aqi"):
            self.aqi.restore(data["aqi"])
        self.formulas.restore(data.get("formulas", {}))
        self.idle.restore(data.get("idle"))
        for cid, saved_compound in data.get("compound", {}).items():
            if cid in self._compound:
                self._compound[cid].restore(saved_compound)
        for rid, saved in data["rules"].items():
            runner = self._runners.get(rid)
            if runner is None or signature(runner.sensors.rule) != saved["sig"]:
                log.info("rule %s changed or removed since the checkpoint; its state resets", rid)
                continue
            runner.restore(saved)

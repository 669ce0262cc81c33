"""Per-partition rule evaluation: telemetry batches in, alert events out.

A ``PartitionProcessor`` owns the kernel state of one telemetry partition. For each
rule it keeps a dense sensor index (station -> row, grown on first sight), the
stations' thresholds gathered into an (n, 4) array and the kernel's state records. All
per-reading work happens in the numba kernel; Python touches each batch's unique
stations and each transition, never each reading.

Exactly-once state: the processor remembers the offset after the last batch it applied
(``next_offset``) and ignores a batch below it, so replaying the log after a restart
from an older committed offset cannot count a reading twice. ``snapshot``/``restore``
carry that offset with the state; the transport stores the snapshot atomically with the
consumer's committed offsets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import msgpack
import numpy as np
import numpy.typing as npt

from engine.alerts import AlertEvent, Level, fingerprint
from engine.batch import Quality, TelemetryBatch
from engine.kernels import tumbling_levels as kernel
from engine.ruleset import RuleSet, ThresholdRule

__all__ = ["PartitionProcessor"]

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1


def _rule_signature(rule: ThresholdRule) -> tuple[object, ...]:
    """What must match for a rule's window state to survive a reload."""
    return (rule.metric, rule.direction, rule.window_ms, rule.aggregate)


@dataclass
class _RuleState:
    """Kernel state of one rule on one partition."""

    rule: ThresholdRule
    stations: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    thresholds: npt.NDArray[np.float64] = field(
        default_factory=lambda: np.full((0, 4), np.nan, dtype=np.float64)
    )
    state: npt.NDArray[np.void] = field(default_factory=lambda: kernel.new_state(0))

    def __post_init__(self) -> None:
        self._rule_rows = {s: i for i, s in enumerate(self.rule.stations)}

    def dense(self, station: str) -> int:
        """Dense index of ``station``, -1 if the rule does not select it."""
        i = self.index.get(station)
        if i is not None:
            return i
        row = self._rule_rows.get(station)
        if row is None:
            return -1
        i = len(self.stations)
        if i >= len(self.state):
            self._grow(max(16, 2 * len(self.state)))
        self.stations.append(station)
        self.index[station] = i
        self.thresholds[i] = self.rule.thresholds[row]
        return i

    def _grow(self, capacity: int) -> None:
        state = kernel.new_state(capacity)
        state[: len(self.state)] = self.state
        thresholds = np.full((capacity, 4), np.nan, dtype=np.float64)
        thresholds[: len(self.thresholds)] = self.thresholds
        self.state, self.thresholds = state, thresholds

    def rebind(self, rule: ThresholdRule) -> None:
        """Take new thresholds from a reloaded rule, keeping the window state."""
        self.rule = rule
        self.__post_init__()
        for station, i in self.index.items():
            row = self._rule_rows.get(station)
            self.thresholds[i] = rule.thresholds[row] if row is not None else np.nan


class PartitionProcessor:
    """Runs a ``RuleSet`` over the telemetry batches of one partition."""

    def __init__(self, ruleset: RuleSet, *, lateness_ms: int = 60_000) -> None:
        self.lateness_ms = lateness_ms
        self.next_offset = 0
        self.watermark = np.iinfo(np.int64).min
        self._rules: dict[str, _RuleState] = {}
        self.ruleset = ruleset
        self.swap_rules(ruleset)

    # ---- rules -------------------------------------------------------------------------

    def swap_rules(self, ruleset: RuleSet) -> None:
        """Install a new rule set between batches, keeping the state of unchanged rules."""
        kept: dict[str, _RuleState] = {}
        for rule in ruleset.rules:
            old = self._rules.get(rule.rule_id)
            if old is not None and _rule_signature(old.rule) == _rule_signature(rule):
                old.rebind(rule)
                kept[rule.rule_id] = old
            else:
                kept[rule.rule_id] = _RuleState(rule)
        self._rules = kept
        self.ruleset = ruleset

    # ---- processing ----------------------------------------------------------------------

    def process(self, batch: TelemetryBatch, offset: int) -> list[AlertEvent]:
        """Apply one batch read at ``offset``; returns the level transitions it caused."""
        if offset < self.next_offset:
            return []  # already applied before a restart: replaying must not double-count
        events: list[AlertEvent] = []
        if len(batch):
            usable = batch.quality != Quality.FAIL
            for metric_i, metric in enumerate(batch.metrics):
                rules = [rs for rs in self._rules.values() if rs.rule.metric == metric]
                if not rules:
                    continue
                rows = np.flatnonzero((batch.metric_idx == metric_i) & usable)
                # Event-time order per sensor; stable so equal times keep arrival order.
                rows = rows[np.argsort(batch.ts[rows], kind="stable")]
                for rs in rules:
                    events.extend(self._apply(rs, batch, rows))
            self.watermark = max(self.watermark, int(batch.ts.max()) - self.lateness_ms)
            events.extend(self.close_windows(self.watermark))
        self.next_offset = offset + 1
        return events

    def _apply(
        self, rs: _RuleState, batch: TelemetryBatch, rows: npt.NDArray[np.intp]
    ) -> list[AlertEvent]:
        lut = np.fromiter((rs.dense(s) for s in batch.stations), np.int32, len(batch.stations))
        sensor = lut[batch.station_idx[rows]]
        keep = sensor >= 0
        sensor, ts, value = sensor[keep], batch.ts[rows][keep], batch.value[rows][keep]
        out = _outputs(2 * len(ts))
        n = kernel.process(
            rs.state,
            rs.thresholds,
            rs.rule.direction,
            rs.rule.deadband,
            rs.rule.window_ms,
            rs.rule.for_ms,
            sensor,
            ts,
            value,
            *out,
        )
        return self._events(rs, out, n)

    def close_windows(self, watermark: int) -> list[AlertEvent]:
        """Close windows ending at or before ``watermark`` for every sensor, silent ones too."""
        events: list[AlertEvent] = []
        for rs in self._rules.values():
            if not rs.stations:
                continue
            out = _outputs(len(rs.state))
            n = kernel.close_windows(
                rs.state,
                rs.thresholds,
                rs.rule.direction,
                rs.rule.deadband,
                rs.rule.window_ms,
                watermark,
                *out,
            )
            events.extend(self._events(rs, out, n))
        return events

    def _events(self, rs: _RuleState, out: tuple[npt.NDArray, ...], n: int) -> list[AlertEvent]:
        sensor, frm, to, ts, value, thr = (a[:n].tolist() for a in out)
        rule = rs.rule
        events = []
        for i, f, t, at, v, th in zip(sensor, frm, to, ts, value, thr, strict=True):
            station = rs.stations[i]
            level, previous = Level(t), Level(f)
            labels = dict(rule.labels.get(station, {}))
            events.append(
                AlertEvent(
                    fingerprint=fingerprint(rule.rule_id, station, rule.metric),
                    rule_id=rule.rule_id,
                    station=station,
                    metric=rule.metric,
                    level=level.label,
                    previous_level=previous.label,
                    state="resolved" if level is Level.NONE else "firing",
                    started_at=int(rs.state[i]["episode_start"]),
                    at=int(at),
                    value=float(v),
                    threshold=float(th),
                    summary=_summary(rule, station, labels, level, previous, v, th),
                    labels=labels,
                )
            )
        return events

    # ---- checkpoints ------------------------------------------------------------------

    def accepted(self, rule_id: str, station: str) -> int:
        """Readings of ``station`` the rule has counted (duplicates excluded)."""
        rs = self._rules[rule_id]
        i = rs.index.get(station)
        return 0 if i is None else int(rs.state[i]["accepted"])

    def snapshot(self) -> bytes:
        """Serialise the state and ``next_offset`` (msgpack, raw state records)."""
        return msgpack.packb(
            {
                "v": SNAPSHOT_VERSION,
                "next_offset": self.next_offset,
                "watermark": self.watermark,
                "rules": {
                    rid: {
                        "sig": list(_rule_signature(rs.rule)),
                        "stations": rs.stations,
                        "state": rs.state[: len(rs.stations)].tobytes(),
                    }
                    for rid, rs in self._rules.items()
                },
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
        for rid, saved in data["rules"].items():
            rs = self._rules.get(rid)
            if rs is None or list(_rule_signature(rs.rule)) != saved["sig"]:
                log.info("rule %s changed or removed since the checkpoint; its state resets", rid)
                continue
            records = np.frombuffer(saved["state"], dtype=kernel.STATE_DTYPE)
            for station, record in zip(saved["stations"], records, strict=True):
                i = rs.dense(station)
                if i >= 0:
                    rs.state[i] = record


def _outputs(n: int) -> tuple[npt.NDArray, ...]:
    return (
        np.empty(n, np.int32),
        np.empty(n, np.int8),
        np.empty(n, np.int8),
        np.empty(n, np.int64),
        np.empty(n, np.float64),
        np.empty(n, np.float64),
    )


def _summary(
    rule: ThresholdRule,
    station: str,
    labels: dict[str, str],
    level: Level,
    previous: Level,
    value: float,
    threshold: float,
) -> str:
    fields = {
        "station": station,
        "name": labels.get("name", station),
        "metric": rule.metric,
        "level": level.label,
        "previous_level": previous.label,
        "value": value,
        "threshold": threshold,
        "unit": labels.get("unit", ""),
        **labels,
    }
    template = rule.summary
    if level is Level.NONE:
        template = rule.resolved_summary
    try:
        return template.format(**fields)
    except (KeyError, ValueError, IndexError) as exc:
        # A bad template must not drop the alert; say what is wrong in the text itself.
        return f"{station} {rule.metric} {level.label} {value:g} (summary template error: {exc})"

"""``vigil replay``: a deterministic event-time backtest through the live kernels.

Input is a CSV with a header. Long format: ``station,metric,ts,value`` (``timestamp`` is
accepted for ``ts``). A CSV without ``station`` or ``metric`` columns (a single series,
such as a USGS export ``timestamp,value,unit,qualifier``) needs ``--station`` and
``--metric``. ``ts`` is ISO 8601 with an offset, or epoch milliseconds.

Readings are sorted by event time (stably) and fed in batches to the same
``PartitionProcessor`` the live engine runs, with no lateness; at the end of the input
every open window is closed, as if time had moved on. Rows that cannot be read are
reported with their line numbers and skipped; the result does not depend on batch size
or machine.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from engine.alerts import AlertEvent
from engine.batch import TelemetryBatch
from engine.corroboration import Corroborator
from engine.kernels.windows import END_OF_INPUT
from engine.processor import PartitionProcessor
from engine.ruleset import RuleSet

__all__ = ["ReplayResult", "read_readings", "replay"]

Reading = tuple[str, str, int, float]
END_OF_TIME = END_OF_INPUT  # the flush: every window closes


@dataclass
class ReplayResult:
    events: list[AlertEvent]
    readings: int
    problems: list[str] = field(default_factory=list)


def _ts(raw: str) -> int:
    raw = raw.strip()
    if raw.lstrip("-").isdigit():
        return int(raw)
    parsed = datetime.fromisoformat(raw)
    if parsed.tzinfo is None:
        raise ValueError(f"time {raw!r} has no UTC offset")
    return int(parsed.timestamp() * 1000)


def metric_name(column: str) -> str:
    """A wide CSV's column as a metric: ``PM2.5_24h`` -> ``pm2_5_24h``."""
    return column.strip().lower().replace(".", "_").replace(" ", "_")


def _read_wide(path: Path, station: str | None) -> tuple[list[Reading], list[str]]:
    readings: list[Reading] = []
    problems: list[str] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or ())
        ts_col = "ts" if "ts" in columns else "timestamp"
        if ts_col not in columns or (station is None and "station" not in columns):
            raise ValueError(f"{path}:1: a wide CSV needs a timestamp and a station column")
        value_cols = [c for c in columns if c not in (ts_col, "station")]
        for row in reader:
            try:
                ts = _ts(row[ts_col])
            except ValueError as exc:
                problems.append(f"{path}:{reader.line_num}: {exc}")
                continue
            for col in value_cols:
                cell = (row.get(col) or "").strip()
                try:
                    value = float(cell)
                except ValueError:
                    continue  # empty cells and text columns (units, file names) are not data
                if math.isfinite(value):
                    readings.append((station or row["station"], metric_name(col), ts, value))
    return readings, problems


def read_readings(
    path: str | Path, station: str | None = None, metric: str | None = None, wide: bool = False
) -> tuple[list[Reading], list[str]]:
    """Readings from ``path`` and ``file:line: message`` lines for the rows skipped.

    ``wide``: one row per time, one column per metric (``timestamp,station,PM2.5,...``);
    every numeric cell is a reading, column names become metric names (``metric_name``).
    """
    if wide:
        return _read_wide(Path(path), station)
    readings: list[Reading] = []
    problems: list[str] = []
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        ts_col = "ts" if "ts" in columns else "timestamp"
        missing = [c for c in (ts_col, "value") if c not in columns]
        if station is None and "station" not in columns:
            missing.append("station (or --station)")
        if metric is None and "metric" not in columns:
            missing.append("metric (or --metric)")
        if missing:
            raise ValueError(f"{path}:1: missing column(s): {', '.join(missing)}")
        for row in reader:
            line = reader.line_num
            try:
                value = float(row["value"])
                if not math.isfinite(value):
                    raise ValueError(f"value {row['value']!r} is not finite")
                readings.append(
                    (
                        station or row["station"],
                        metric or row["metric"],
                        _ts(row[ts_col]),
                        value,
                    )
                )
            except (ValueError, TypeError) as exc:
                problems.append(f"{path}:{line}: {exc}")
    return readings, problems


def _chunks(readings: Sequence[Reading], size: int) -> Iterator[Sequence[Reading]]:
    for start in range(0, len(readings), size):
        yield readings[start : start + size]


def replay(
    ruleset: RuleSet,
    readings: Sequence[Reading],
    batch_size: int = 10_000,
    *,
    flush: bool = True,
) -> list[AlertEvent]:
    """The alert events the engine would have sent for ``readings``.

    With ``flush`` the windows still open after the last reading are closed, as if time
    had moved on; without it the result is what a live engine has sent by then.
    """
    ordered = sorted(readings, key=lambda r: r[2])
    proc = PartitionProcessor(ruleset, lateness_ms=0)
    events: list[AlertEvent] = []
    for offset, chunk in enumerate(_chunks(ordered, batch_size)):
        events.extend(proc.process(TelemetryBatch.from_rows(chunk), offset))
    if flush:
        events.extend(proc.close_windows(END_OF_TIME))
    if ruleset.corroboration:
        corroborator = Corroborator(ruleset.corroboration)
        events += corroborator.run(events)  # in event time, as the live stage takes them
    return events


@dataclass(frozen=True)
class MetricRow:
    """One computed value: a closed window's aggregate, or a derived metric's value."""

    source: str  # the rule id, or "derive.aqi"
    station: str
    metric: str
    kind: str  # the window aggregate, or "hourly" for derived AQI
    ts: int  # ms: the window's end, or the derived value's hour
    value: float
    #: e.g. the primary pollutant(s) of an AQI, and ``; incomplete: no pm10_24h`` when
    #: an input of its method was missing (``engine.derive.aqi.AqiHour.detail``)
    detail: str = ""


def computed_values(
    ruleset: RuleSet, readings: Sequence[Reading], batch_size: int = 10_000
) -> list[MetricRow]:
    """Every closed window's aggregate and every derived value over ``readings``.

    Computed by the window chain (a shadow of ``replay``; the early-firing runner keeps
    no per-window output), with the same derivations the live engine makes.
    """
    from engine.runners.windowed import WindowedRunner

    ordered = sorted(readings, key=lambda r: r[2])
    proc = PartitionProcessor(ruleset, lateness_ms=0, early_firing=False)
    runners: dict[str, WindowedRunner] = {}
    for rule in ruleset.rules:
        runner = proc.runner(rule.rule_id)
        assert isinstance(runner, WindowedRunner)
        runner.closed = []
        runners[rule.rule_id] = runner
    if proc.aqi is not None:
        proc.aqi.record = []
    for offset, chunk in enumerate(_chunks(ordered, batch_size)):
        proc.process(TelemetryBatch.from_rows(chunk), offset)
    proc.close_windows(END_OF_TIME)
    rows: list[MetricRow] = []
    for rid, runner in runners.items():
        rule = runner.rule
        for sensor, end, value in runner.closed or ():
            station = runner.sensors.stations[sensor]
            rows.append(MetricRow(rid, station, rule.metric, rule.aggregate, end, value))
    for hour in (proc.aqi.record or []) if proc.aqi is not None else []:
        rows.append(
            MetricRow("derive.aqi", hour.station, "aqi", "hourly", hour.hour, hour.aqi,
                      hour.detail)
        )  # fmt: skip
    rows.sort(key=lambda r: (r.ts, r.source, r.station))
    return rows


@dataclass(frozen=True)
class AlertDiff:
    """How a rule change alters the alerts over the same readings."""

    added: list[AlertEvent]
    removed: list[AlertEvent]
    moved: list[tuple[AlertEvent, AlertEvent]]  # (old, new): same transition, other time
    unchanged: int


def diff_alerts(old: Sequence[AlertEvent], new: Sequence[AlertEvent]) -> AlertDiff:
    """Pair transitions by (rule, station, metric, from, to) in time order."""

    def grouped(events: Sequence[AlertEvent]) -> dict[tuple[str, ...], list[AlertEvent]]:
        out: dict[tuple[str, ...], list[AlertEvent]] = {}
        for e in sorted(events, key=lambda e: e.at):
            key = (e.rule_id, e.station, e.metric, e.previous_level, e.level)
            out.setdefault(key, []).append(e)
        return out

    a, b = grouped(old), grouped(new)
    added: list[AlertEvent] = []
    removed: list[AlertEvent] = []
    moved: list[tuple[AlertEvent, AlertEvent]] = []
    unchanged = 0
    for key in sorted(a.keys() | b.keys()):
        olds, news = a.get(key, []), b.get(key, [])
        for o, n in zip(olds, news, strict=False):
            if o.at == n.at:
                unchanged += 1
            else:
                moved.append((o, n))
        removed.extend(olds[len(news) :])
        added.extend(news[len(olds) :])
    return AlertDiff(added, removed, moved, unchanged)

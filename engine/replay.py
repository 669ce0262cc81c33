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
from engine.processor import PartitionProcessor
from engine.ruleset import RuleSet

__all__ = ["ReplayResult", "read_readings", "replay"]

Reading = tuple[str, str, int, float]
END_OF_TIME = 2**62


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


def read_readings(
    path: str | Path, station: str | None = None, metric: str | None = None
) -> tuple[list[Reading], list[str]]:
    """Readings from ``path`` and ``file:line: message`` lines for the rows skipped."""
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
    return events


def window_values(
    ruleset: RuleSet, readings: Sequence[Reading], batch_size: int = 10_000
) -> list[tuple[str, str, str, str, int, float]]:
    """Every closed window's aggregate: (rule_id, station, metric, aggregate, end_ms, value).

    Computed by the window chain over the same readings (a shadow of ``replay``; the
    early-firing runner keeps no per-window output).
    """
    from engine.runners.windowed import WindowedRunner

    ordered = sorted(readings, key=lambda r: r[2])
    proc = PartitionProcessor(ruleset, lateness_ms=0, early_firing=False)
    runners = {rid: proc.runner(rid) for rid in (r.rule_id for r in ruleset.rules)}
    for runner in runners.values():
        assert isinstance(runner, WindowedRunner)
        runner.closed = []
    for offset, chunk in enumerate(_chunks(ordered, batch_size)):
        proc.process(TelemetryBatch.from_rows(chunk), offset)
    proc.close_windows(END_OF_TIME)
    rows = []
    for rid, runner in runners.items():
        assert isinstance(runner, WindowedRunner) and runner.closed is not None
        rule = runner.rule
        for sensor, end, value in runner.closed:
            rows.append(
                (rid, runner.sensors.stations[sensor], rule.metric, rule.aggregate, end, value)
            )
    rows.sort(key=lambda r: (r[4], r[0], r[1]))
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

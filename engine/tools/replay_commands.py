"""The ``vigil replay`` and ``vigil rules diff`` commands: rules run over a CSV of readings."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

from engine.tools.problems import report

if TYPE_CHECKING:
    from engine.contracts.alerts import AlertEvent
    from engine.contracts.ruleset import RuleSet
    from engine.tools.replay import MetricRow
    from engine.tools.replay_input import Progress, Skipped, SortedReadings
    from rules.registry import Registry

__all__ = ["add_input_args", "replay_command", "rules_diff_command"]


def _compile(rules: list[str], registry: Registry) -> RuleSet:
    from rules.api import load_ruleset

    return load_ruleset(rules, registry, "en").ruleset


def _read_input(args: argparse.Namespace, progress: Progress) -> tuple[SortedReadings, Skipped]:
    """The readings of ``--input`` (a file, or ``-``: standard input), sorted by time."""
    import io
    import os

    from engine.tools.replay_input import Skipped, SortedReadings, counted_lines, read_csv
    from rules.times import parse_tz

    tz = parse_tz(args.tz) if args.tz else None
    readings, skipped = SortedReadings(), Skipped()
    try:
        if args.input == "-":
            stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")
            name, size = "<stdin>", None
        else:
            stream = open(args.input, encoding="utf-8", newline="")  # noqa: SIM115
            name, size = args.input, os.path.getsize(args.input)
        with stream:
            progress.start("reading", size, "readings")
            lines = counted_lines(stream, progress, readings)
            read_csv(lines, name, readings, skipped, station=args.station, metric=args.metric,
                     wide=args.wide, tz=tz)  # fmt: skip
    except BaseException:
        readings.close()
        raise
    return readings, skipped


def _open_out(path: str) -> TextIO:
    """``path`` for writing; ``-`` is standard output (left open)."""
    if path == "-":
        return open(sys.stdout.fileno(), "w", encoding="utf-8", closefd=False)
    return open(path, "w", encoding="utf-8", newline="")


def replay_command(args: argparse.Namespace) -> int:
    from connectors.sinks.console import format_event
    from engine.tools.replay import computed_values, coverage, replay
    from engine.tools.replay_input import Progress
    from rules.errors import RulesInvalid
    from rules.registry import load_registry

    if [args.alerts_out, args.metrics_out].count("-") > 1:
        return report(ValueError("only one of --alerts-out and --metrics-out can be '-'"))
    progress = Progress(sys.stderr)
    try:
        registry = load_registry(args.stations)
        ruleset = _compile(args.rules, registry)
        readings, skipped = _read_input(args, progress)
    except (RulesInvalid, OSError, ValueError) as exc:
        return report(exc)
    with readings:
        unread, not_read = coverage(readings.pairs(), ruleset, [s.id for s in registry])
        for line in skipped.lines():
            print(f"warning: {line}", file=sys.stderr)
        for line in unread:
            print(f"warning: {line}", file=sys.stderr)
        events = replay(ruleset, readings, progress=progress)
        if "-" not in (args.alerts_out, args.metrics_out):
            for event in events:
                print(format_event(event))
        if args.alerts_out:
            with _open_out(args.alerts_out) as f:
                f.writelines(e.to_json() + "\n" for e in events)
        if args.metrics_out:
            with _open_out(args.metrics_out) as f:
                _write_metrics(f, computed_values(ruleset, readings))
        n = len(readings)
    print(
        f"{_count(n, 'reading')}, {_count(len(events), 'alert event')}, "
        f"{_count(len(skipped), 'row')} skipped, {_count(not_read, 'reading')} read by no rule",
        file=sys.stderr,
    )
    if args.strict and (len(skipped) or not_read or not n):
        print("strict: exit 1 (rows skipped, readings no rule read, or no readings)",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


#: ``vigil rules diff --strict``: the input was not wholly read (rows skipped, readings
#: no rule of either version reads, or no readings), whether or not anything changed.
#: Distinct from 1 ("changes found"): a CI gate must not take "nothing read" for
#: "nothing changed", nor an unread input for a rule change.
DIFF_NOT_READ = 3


def _count(n: int, noun: str) -> str:
    """``1 row``, ``2 rows``, ``0 rows``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _write_metrics(f: TextIO, rows: list[MetricRow]) -> None:
    import csv

    out = csv.writer(f)
    out.writerow(["source", "station", "metric", "kind", "time", "value", "detail"])
    for r in rows:
        out.writerow([r.source, r.station, r.metric, r.kind, _ms(r.ts), f"{r.value:.6g}",
                      r.detail])  # fmt: skip


def rules_diff_command(args: argparse.Namespace) -> int:
    from collections import Counter

    from engine.tools.replay import coverage, diff_alerts, readers_of, replay
    from engine.tools.replay_input import Progress
    from rules.errors import RulesInvalid
    from rules.registry import load_registry

    progress = Progress(sys.stderr)
    try:
        registry = load_registry(args.stations)
        old = _compile([args.old], registry)
        new = _compile([args.new], registry)
        readings, skipped = _read_input(args, progress)
    except (RulesInvalid, OSError, ValueError) as exc:
        return report(exc)
    for line in skipped.lines():
        print(f"warning: {line}", file=sys.stderr)
    with readings:
        # readings neither version reads (a station id without its leading zero, a
        # wrong metric): "nothing changed" over them is no answer, so say so
        old_readers = readers_of(old)
        unread_by_old = Counter({
            (s, m): n for (s, m), n in readings.pairs().items() if m not in old_readers.get(s, ())
        })  # fmt: skip
        unread, not_read = coverage(unread_by_old, new, [s.id for s in registry])
        for line in unread:
            print(f"warning: {line}", file=sys.stderr)
        diff = diff_alerts(replay(old, readings), replay(new, readings))
        n_readings = len(readings)
    changes: list[tuple[int, str]] = []
    for e in diff.added:
        changes.append((e.at, f"+ {_ms(e.at)} {_transition(e)} {e.value:g}"))
    for e in diff.removed:
        changes.append((e.at, f"- {_ms(e.at)} {_transition(e)} {e.value:g}"))
    for o, n in diff.moved:
        changes.append((o.at, f"~ {_ms(o.at)} -> {_ms(n.at)} {_transition(n)}"))
    for _, line in sorted(changes, key=lambda c: c[0]):
        print(line)
    print(
        f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.moved)} moved, "
        f"{diff.unchanged} unchanged; {_count(n_readings, 'reading')}, "
        f"{_count(len(skipped), 'row')} skipped, {_count(not_read, 'reading')} read by no rule",
        file=sys.stderr,
    )
    if args.strict and (len(skipped) or not_read or not n_readings):
        print(f"strict: exit {DIFF_NOT_READ} (rows skipped, readings no rule read, or no "
              "readings)", file=sys.stderr)  # fmt: skip
        return DIFF_NOT_READ
    return 1 if diff.changed else 0


def _transition(e: AlertEvent) -> str:
    return f"{e.rule_id} {e.station} {e.previous_level}->{e.level}"


def _ms(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")


def add_input_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input", required=True,
        help="CSV: station,metric,ts,value (or a single series, or --wide); - reads stdin",
    )  # fmt: skip
    parser.add_argument("--station", help="station id, for a CSV without a station column")
    parser.add_argument("--metric", help="metric name, for a CSV without a metric column")
    parser.add_argument(
        "--wide", action="store_true",
        help="one column per metric (timestamp,station,PM2.5,...): every numeric cell is a reading",
    )  # fmt: skip
    parser.add_argument(
        "--tz",
        help="time zone of times written without a UTC offset: an IANA name "
        "(Asia/Shanghai, America/Chicago) or an offset (+08:00); without it such rows "
        "are skipped and counted",
    )

"""``vigil rules test FILE...``: run rule test files (``rules.testfile``) through the replay.

Contract: ``run_test_files(paths, out)`` prints one ``ok``/``FAIL`` line per test to
``out``, and for a failure the expected-versus-got differences: expected alerts not
raised, alerts raised and not expected (each with its time in the file's ``tz``, else
UTC), and a ``started_at`` or ``summary`` that differs where the test gives one.
Returns 0 when every test passes, 1 when one fails, 2 when a file is invalid (its
problems as ``file:line:col`` lines, no test of it run). Rows of an input CSV that
cannot be read and readings no rule reads are warned about under the test, never
dropped silently.

A test's events are every event the replay raises (``<rule>#qc`` and ``<rule>#silent``
included), or only those of its ``rules:``; they match expected alerts as a multiset
of (rule, station, level, at), so their order in the file does not matter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import tzinfo
from pathlib import Path
from typing import TextIO

from engine.contracts.alerts import AlertEvent
from engine.tools.replay import coverage, replay
from engine.tools.replay_input import Skipped, SortedReadings, read_csv
from rules.api import load_ruleset
from rules.errors import RulesInvalid
from rules.registry import load_registry
from rules.source import Source, SourceError, load_yaml
from rules.testfile import (
    CsvInput,
    ExpectedAlert,
    InputForm,
    ReadingInput,
    RuleTest,
    SeriesInput,
    TestFile,
    load_test_source,
)
from rules.times import format_ms, to_ms

__all__ = ["run_test_files"]

Key = tuple[str, str, str, int]  # rule, station, level, at (ms)


def run_test_files(paths: Sequence[str | Path], out: TextIO) -> int:
    """Run every test of every file; see the module for output and exit status."""
    status = 0
    passed = failed = 0
    for path in paths:
        try:
            source = load_yaml(path)
        except SourceError as exc:
            print(f"{path}:{exc.line}:{exc.col}: {exc.message}", file=out)
            status = 2
            continue
        except OSError as exc:
            print(f"{path}:1:1: cannot read: {exc.strerror}", file=out)
            status = 2
            continue
        spec, inputs, tz, problems = load_test_source(source)
        if spec is None or problems:
            print("\n".join(str(p) for p in problems), file=out)
            status = 2
            continue
        try:
            registry = load_registry(spec.path(source, spec.stations))
            rule_paths = [spec.path(source, f) for f in spec.rule_files]
            ruleset = load_ruleset(rule_paths, registry, spec.lang).ruleset
        except RulesInvalid as exc:
            print("\n".join(exc.lines), file=out)
            status = 2
            continue
        for i, (test, forms) in enumerate(zip(spec.tests, inputs, strict=True)):
            line, _ = source.position(("tests", i))
            where = f"{source.file}:{line}"
            with SortedReadings() as readings:
                skipped = _read(spec, source, forms, readings, tz)
                warnings = [f"warning: {w}" for w in skipped.lines()]
                unread, _ = coverage(readings.pairs(), ruleset, [s.id for s in registry])
                warnings += [f"warning: {w}" for w in unread]
                events = replay(ruleset, readings)
            if test.rules is not None:
                events = [e for e in events if e.rule_id in test.rules]
            report = _compare(test, events, tz)
            if report:
                failed += 1
                status = max(status, 1)
                print(f"FAIL {where} {test.name!r}", file=out)
            else:
                passed += 1
                print(f"ok   {where} {test.name!r} ({len(events)} alert events)", file=out)
            for text in warnings + report:
                print(f"  {text}", file=out)
    print(f"{passed} passed, {failed} failed", file=out)
    return status


def _read(
    spec: TestFile,
    source: Source,
    forms: list[InputForm],
    into: SortedReadings,
    tz: tzinfo | None,
) -> Skipped:
    skipped = Skipped()
    for form in forms:
        if isinstance(form, ReadingInput):
            into.add(form.station, form.metric, to_ms(form.ts, tz), form.value)
        elif isinstance(form, SeriesInput):
            s = form.series
            start = to_ms(s.start, tz)
            for k, value in enumerate(s.values):
                if value is not None:
                    into.add(s.station, s.metric, start + k * s.every_ms, value)
        elif isinstance(form, CsvInput):
            path = spec.path(source, form.csv)
            with path.open(encoding="utf-8", newline="") as f:
                read_csv(f, str(path), into, skipped, station=form.station, metric=form.metric,
                         wide=form.wide, tz=tz)  # fmt: skip
    return skipped


def _key(e: AlertEvent) -> Key:
    return (e.rule_id, e.station, e.level, e.at)


def _expected_key(a: ExpectedAlert, tz: tzinfo | None) -> Key:
    return (a.rule, a.station, a.level, to_ms(a.at, tz))


def _compare(test: RuleTest, events: list[AlertEvent], tz: tzinfo | None) -> list[str]:
    """Expected-versus-got lines; empty when the test passes."""
    want = Counter(_expected_key(a, tz) for a in test.expected_alerts)
    got = Counter(_key(e) for e in events)
    missing = sorted((want - got).elements(), key=lambda k: (k[3], k[0], k[1]))
    unexpected = got - want
    extra: list[AlertEvent] = []
    for e in sorted(events, key=lambda e: (e.at, e.rule_id, e.station)):
        if unexpected[_key(e)] > 0:
            unexpected[_key(e)] -= 1
            extra.append(e)
    lines: list[str] = []
    if missing:
        lines.append("expected, not raised:")
        lines += [f"  {format_ms(at, tz)} {rule} {station} {level}"
                  for rule, station, level, at in missing]  # fmt: skip
    if extra:
        lines.append("raised, not expected:")
        lines += [f"  {_show(e, tz)}" for e in extra]
    by_key: dict[Key, list[AlertEvent]] = {}
    for e in events:
        by_key.setdefault(_key(e), []).append(e)
    for a in test.expected_alerts:
        matches = by_key.get(_expected_key(a, tz))
        if not matches:
            continue
        e = matches.pop(0)
        if a.started_at is not None and to_ms(a.started_at, tz) != e.started_at:
            lines.append(
                f"started_at differs at {_show(e, tz)}: expected "
                f"{format_ms(to_ms(a.started_at, tz), tz)}, got {format_ms(e.started_at, tz)}"
            )
        if a.summary is not None and a.summary != e.summary:
            lines.append(
                f"summary differs at {_show(e, tz)}: expected {a.summary!r}, got {e.summary!r}"
            )
    return lines


def _show(e: AlertEvent, tz: tzinfo | None) -> str:
    return (
        f"{format_ms(e.at, tz)} {e.rule_id} {e.station} {e.level} "
        f"(from {e.previous_level}, value {e.value:g})"
    )

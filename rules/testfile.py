"""Rule test files: readings in, the alerts a hydrologist expects out (``vigil rules test``).

A file (YAML, told from a rule file by its top-level ``tests:``)::

    rule_files: [rules.yaml]          # relative to this file
    stations: stations.yaml           # the registry, relative to this file
    tz: America/Chicago               # optional: for times written without an offset
    lang: en                          # optional (en): the summaries' language, en or zh
    tests:
      - name: a rise and the all-clear
        input:                        # any mix of the three forms
          - {station: "08211520", metric: water_level, ts: "2023-04-24T08:45", value: 19.8}
          - {series: {station: "08211520", metric: water_level,
                      start: "2023-04-24T09:00", every: 15m, values: [20.1, 21.9, null]}}
          - {csv: ../data/event.csv, station: "08211520", metric: water_level}
        rules: [oso.stage]            # optional: compare only these rules' events
        expected_alerts:              # every event, in any order
          - {rule: oso.stage, station: "08211520", level: yellow, at: "2023-04-24T09:00",
             started_at: "2023-04-24T09:00", summary: "..."}   # the last two optional

Contract: ``load_test_source(source)`` returns the validated ``TestFile`` and a
``Problem`` (``file:line:col``) for everything wrong, times included; it never raises for
bad input. ``level: none`` is an all-clear. A series' ``null`` is a missing reading. A CSV
is read as ``vigil replay`` reads it (``station``/``metric`` for a single series,
``wide`` for one column per metric), with the file's ``tz``.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError

from rules.durations import parse_duration_ms
from rules.errors import Problem, format_path, problems_from_validation
from rules.model import StrictModel
from rules.source import Key, Source
from rules.times import NaiveTime, parse_tz, to_ms

__all__ = [
    "CsvInput",
    "ExpectedAlert",
    "ReadingInput",
    "RuleTest",
    "SeriesInput",
    "TestFile",
    "check_test_source",
    "load_test_source",
]

Time = str | int | datetime  # checked against the file's tz once the tz is known
DurationMs = Annotated[int, BeforeValidator(parse_duration_ms)]
AlertLevel = Literal["none", "blue", "yellow", "orange", "red"]


class ReadingInput(StrictModel):
    station: str
    metric: str
    ts: Time
    value: float


class Series(StrictModel):
    station: str
    metric: str
    start: Time
    every_ms: DurationMs = Field(alias="every")
    values: tuple[float | None, ...] = Field(min_length=1)


class SeriesInput(StrictModel):
    series: Series


class CsvInput(StrictModel):
    csv: str  # relative to the test file
    station: str | None = None
    metric: str | None = None
    wide: bool = False


class ExpectedAlert(StrictModel):
    rule: str
    station: str
    level: AlertLevel
    at: Time
    started_at: Time | None = None
    summary: str | None = None


class RuleTest(StrictModel):
    name: str = Field(min_length=1)
    input: tuple[dict[str, Any], ...] = Field(min_length=1)  # validated per form below
    rules: tuple[str, ...] | None = None
    expected_alerts: tuple[ExpectedAlert, ...] = ()


class TestFile(StrictModel):
    rule_files: tuple[str, ...] = Field(min_length=1)
    stations: str
    tz: str | None = None
    lang: Literal["zh", "en"] = "en"  # the language of the summaries
    tests: tuple[RuleTest, ...] = Field(min_length=1)

    def path(self, source: Source, name: str) -> Path:
        """``name`` (written in the file) relative to the test file's folder."""
        return Path(source.file).parent / name


InputForm = ReadingInput | SeriesInput | CsvInput


def input_model(raw: Any) -> type[InputForm]:
    """The form of one ``input`` item, by its keys (``csv``, ``series``, else a reading)."""
    if isinstance(raw, dict) and "csv" in raw:
        return CsvInput
    if isinstance(raw, dict) and "series" in raw:
        return SeriesInput
    return ReadingInput


def load_test_source(
    source: Source,
) -> tuple[TestFile | None, list[list[InputForm]], tzinfo | None, list[Problem]]:
    """The file, each test's inputs, its time zone, and every problem found."""
    problems: list[Problem] = []
    try:
        spec = TestFile.model_validate(source.data)
    except ValidationError as exc:
        return None, [], None, _file_problems(exc, source)
    tz: tzinfo | None = None
    if spec.tz is not None:
        try:
            tz = parse_tz(spec.tz)
        except ValueError as exc:
            return None, [], None, [_at(source, ("tz",), str(exc))]
    inputs: list[list[InputForm]] = []
    for i, test in enumerate(spec.tests):
        forms: list[InputForm] = []
        for j, raw in enumerate(test.input):
            base: tuple[Key, ...] = ("tests", i, "input", j)
            try:
                forms.append(input_model(raw).model_validate(raw))
            except ValidationError as exc:
                problems += problems_from_validation(exc, source, base, 0)
                continue
            for path, value in _times_of(forms[-1]):
                problems += _time_problem(source, (*base, *path), value, tz)
        inputs.append(forms)
        for k, alert in enumerate(test.expected_alerts):
            base = ("tests", i, "expected_alerts", k)
            problems += _time_problem(source, (*base, "at"), alert.at, tz)
            if alert.started_at is not None:
                problems += _time_problem(source, (*base, "started_at"), alert.started_at, tz)
    named: list[tuple[tuple[Key, ...], str]] = [(("stations",), spec.stations)]
    named += [(("rule_files", n), name) for n, name in enumerate(spec.rule_files)]
    named += [
        (("tests", i, "input", j, "csv"), form.csv)
        for i, forms in enumerate(inputs)
        for j, form in enumerate(forms)
        if isinstance(form, CsvInput)
    ]
    for path, name in named:
        if not spec.path(source, name).is_file():
            problems.append(_at(source, path, f"no such file: {spec.path(source, name)}"))
    return spec, inputs, tz, problems


def _file_problems(exc: ValidationError, source: Source) -> list[Problem]:
    """The problems of a file that failed validation, one per error, but for pydantic's
    "too short" of a collection whose items failed (``tests`` with its one test invalid:
    "at least 1 item ..., not 0"), which the items' own problems already explain."""
    errors = exc.errors(include_url=False)
    problems = problems_from_validation(exc, source, (), 0)  # one per error, in order
    return [
        problem
        for problem, err in zip(problems, errors, strict=True)
        if not (
            err["type"] == "too_short"
            and any(o is not err and o["loc"][: len(err["loc"])] == err["loc"] for o in errors)
        )
    ]


def check_test_source(source: Source) -> list[Problem]:
    """The problems of a rule test file, for ``rules check``."""
    return load_test_source(source)[3]


def _times_of(form: InputForm) -> list[tuple[tuple[Key, ...], Time]]:
    if isinstance(form, ReadingInput):
        return [(("ts",), form.ts)]
    if isinstance(form, SeriesInput):
        return [(("series", "start"), form.series.start)]
    return []


def _time_problem(
    source: Source, path: tuple[Key, ...], value: Time, tz: tzinfo | None
) -> list[Problem]:
    try:
        to_ms(value, tz)
    except NaiveTime as exc:
        return [_at(source, path, f"{exc} (set the file's tz)")]
    except ValueError as exc:
        return [_at(source, path, str(exc))]
    return []


def _at(source: Source, path: tuple[Key, ...], message: str) -> Problem:
    line, col = source.position(path)
    return Problem(source.file, line, col, format_path(path), message)

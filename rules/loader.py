"""Rule files: YAML -> validated rule specs, keeping where each value was written.

Contract:

- ``read_rule_file(path, station_fields)`` never raises for a bad file: it returns the
  rules that validated and a ``Problem`` for each that did not, so that ``rules check``
  reports every problem of every file in one run.
- ``load_rule_file(path, registry)`` is the strict form: the file or ``RulesInvalid``.
- A problem's path is relative to its rule (``levels.red.above``); its line and column
  are those of the offending key in the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from rules.errors import Problem, RulesInvalid, did_you_mean, format_path, problems_from_validation
from rules.registry import Registry
from rules.schema import RuleSpec, rule_model_for
from rules.source import Key, Source, SourceError, load_yaml

__all__ = ["LoadedRule", "RuleFile", "load_rule_file", "read_rule_file"]

_TOP_KEYS = ("version", "rules")


@dataclass(frozen=True)
class LoadedRule:
    """A validated rule and where it was written (``source.position(base + path)``)."""

    spec: RuleSpec
    source: Source
    base: tuple[Key, ...]  # ("rules", i)

    def problem(self, path: tuple[Key, ...], message: str) -> Problem:
        """A problem at ``path`` inside this rule."""
        line, col = self.source.position((*self.base, *path))
        return Problem(self.source.file, line, col, format_path(path), message)


@dataclass(frozen=True)
class RuleFile:
    """The valid rules of one file, in file order."""

    file: str
    rules: tuple[LoadedRule, ...]


def read_rule_file(
    path: str | Path | Source, station_fields: Iterable[str] | None = None
) -> tuple[RuleFile, list[Problem]]:
    """Validate one file; returns the rules that passed and the problems of the rest.

    ``path`` may be the file already parsed (``rules check`` reads each file once to
    tell what it is). ``station_fields``: names ``station.<x>`` may use
    (``Registry.field_names()``); None (no registry) accepts any name.
    """
    if isinstance(path, Source):
        source, file = path, path.file
    else:
        file = str(path)
        try:
            source = load_yaml(path)
        except SourceError as exc:
            return RuleFile(file, ()), [Problem(file, exc.line, exc.col, "", exc.message)]
        except OSError as exc:
            return RuleFile(file, ()), [Problem(file, 1, 1, "", f"cannot read: {exc.strerror}")]
    data = source.data
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        return RuleFile(file, ()), [_at(source, (), "expected a mapping with a 'rules' list")]
    problems = [
        _at(source, (key,), f"unknown field {str(key)!r}{did_you_mean(str(key), _TOP_KEYS)}")
        for key in data
        if key not in _TOP_KEYS
    ]
    if data.get("version", 1) != 1:
        problems.append(_at(source, ("version",), f"unsupported version {data['version']!r}"))
    context = {} if station_fields is None else {"station_fields": frozenset(station_fields)}
    rules: list[LoadedRule] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(data["rules"]):
        base: tuple[Key, ...] = ("rules", i)
        try:
            spec = rule_model_for(raw).model_validate(raw, context=context)
        except ValidationError as exc:
            problems += problems_from_validation(exc, source, base, len(base))
            continue
        rule = LoadedRule(spec, source, base)
        if spec.id in seen:
            problems.append(
                rule.problem(
                    ("id",), f"duplicate rule id {spec.id!r} (first at rules[{seen[spec.id]}])"
                )
            )
            continue
        seen[spec.id] = i
        rules.append(rule)
    return RuleFile(file, tuple(rules)), problems


def load_rule_file(path: str | Path, registry: Registry | None = None) -> RuleFile:
    """The file's rules, or RulesInvalid with every schema problem (no registry checks)."""
    fields = registry.field_names() if registry is not None else None
    rule_file, problems = read_rule_file(path, fields)
    if problems:
        raise RulesInvalid(problems)
    return rule_file


def _at(source: Source, path: tuple[Key, ...], message: str) -> Problem:
    line, col = source.position(path)
    return Problem(source.file, line, col, format_path(path), message)

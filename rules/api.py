"""What the engine calls: registry + rule files in, compiled rules or problem lines out.

- ``load_registry(path) -> Registry`` (raises ``RulesInvalid``)
- ``validate(paths, registry) -> (files, problems)``: schema + semantic checks, sorted
  problems; never raises for bad input.
- ``load_ruleset(paths, stations, lang) -> Compiled`` (raises ``RulesInvalid`` whose
  ``lines`` are the ``file:line:col: path: message`` lines). ``Compiled.ruleset`` is the
  ``engine.contracts.ruleset.RuleSet`` to run.
- ``check_paths(paths, stations) -> list[str]``: the lines ``vigil rules check`` prints;
  empty means valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from rules.checks import check_rules
from rules.compiler import Compiled, compile_rules
from rules.errors import Problem, RulesInvalid
from rules.loader import RuleFile, read_rule_file
from rules.registry import Registry, load_registry

__all__ = ["check_paths", "load_ruleset", "validate"]

PathLike = str | Path


def validate(
    paths: Sequence[PathLike], registry: Registry | None
) -> tuple[list[RuleFile], list[Problem]]:
    """Schema-check each file, then check the valid rules against ``registry``."""
    fields = registry.field_names() if registry is not None else None
    files: list[RuleFile] = []
    problems: list[Problem] = []
    for path in paths:
        rule_file, found = read_rule_file(path, fields)
        files.append(rule_file)
        problems += found
    problems += check_rules(files, registry)
    problems.sort(key=lambda p: (p.file, p.line, p.col))  # stable: schema order at a tie
    return files, problems


def _registry(stations: PathLike | Registry) -> Registry:
    return stations if isinstance(stations, Registry) else load_registry(stations)


def load_ruleset(
    paths: Sequence[PathLike], stations: PathLike | Registry, lang: Literal["zh", "en"] = "zh"
) -> Compiled:
    """Validate, check and compile; raises RulesInvalid listing every problem."""
    registry = _registry(stations)
    files, problems = validate(paths, registry)
    if problems:
        raise RulesInvalid(problems)
    return compile_rules(files, registry, lang)


def check_paths(paths: Sequence[PathLike], stations: PathLike | Registry | None) -> list[str]:
    """Problem lines for ``rules check``; ``[]`` when every file is valid.

    Without ``stations`` only the checks that need no registry run.
    """
    registry: Registry | None = None
    if stations is not None:
        try:
            registry = _registry(stations)
        except RulesInvalid as exc:
            return exc.lines
        except OSError as exc:
            return [f"{stations}:1:1: cannot read: {exc.strerror}"]
    files, problems = validate(paths, registry)
    if problems or registry is None:
        return [str(p) for p in problems]
    try:  # the engine contract checks shapes itself; a failure here is our bug, say so
        compile_rules(files, registry)
    except ValueError as exc:
        return [f"{paths[0]}:1:1: internal error compiling rules: {exc}"]
    return []

"""What the engine calls: registry + rule files in, compiled rules or problem lines out.

- ``load_registry(path) -> Registry`` (raises ``RulesInvalid``)
- ``validate(paths, registry) -> (files, problems)``: schema + semantic checks, sorted
  problems; never raises for bad input.
- ``load_ruleset(paths, stations, lang) -> Compiled`` (raises ``RulesInvalid`` whose
  ``lines`` are the ``file:line:col: path: message`` lines; warnings do not raise, they
  are ``Compiled.warnings``). ``Compiled.ruleset`` is the
  ``engine.contracts.ruleset.RuleSet`` to run.
- ``check_paths(paths, stations) -> list[str]``: the lines ``vigil rules check`` prints;
  empty means valid, and so do lines that are all warnings (``is_warning``). ``paths``
  may mix rule files, station registries and rule tests (told apart by content,
  ``rules.files``) and directories of them.
- ``check_files(paths, stations)``: the same lines and how many files of each kind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from rules.checks import check_rules
from rules.compiler import Compiled, compile_rules
from rules.errors import Problem, RulesInvalid
from rules.files import FileKind, NoFiles, expand, kind_of
from rules.loader import RuleFile, read_rule_file
from rules.registry import Registry, load_registry, registry_from_source
from rules.source import Source, SourceError, load_yaml
from rules.testfile import check_test_source

__all__ = ["check_files", "check_paths", "load_ruleset", "validate"]

PathLike = str | Path


def validate(
    paths: Sequence[PathLike | Source], registry: Registry | None
) -> tuple[list[RuleFile], list[Problem]]:
    """Schema-check each file (a path, or a file already parsed), then check the valid
    rules against ``registry``."""
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
    errors = [p for p in problems if not p.warning]
    if errors:
        raise RulesInvalid(errors)
    compiled = compile_rules(files, registry, lang)
    return replace(compiled, warnings=tuple(str(p) for p in problems if p.warning))


def check_paths(paths: Sequence[PathLike], stations: PathLike | Registry | None) -> list[str]:
    """Problem lines for ``rules check``; ``[]`` when every file is valid.

    Without ``stations`` only the checks that need no registry run.
    """
    return check_files(paths, stations)[0]


def check_files(
    paths: Sequence[PathLike], stations: PathLike | Registry | None
) -> tuple[list[str], Counter[FileKind]]:
    """``check_paths``'s lines, and how many files of each kind were checked.

    Each file is read once and checked as what its content says it is: a rule file
    (against ``stations`` when given), a station registry (validated on its own) or a
    rule test file (its structure; ``vigil rules test`` runs it).
    """
    kinds: Counter[FileKind] = Counter()
    try:
        files = expand(paths)
    except NoFiles as exc:
        return [str(exc)], kinds
    registry: Registry | None = None
    if stations is not None:
        try:
            registry = _registry(stations)
        except RulesInvalid as exc:
            return exc.lines, kinds
        except OSError as exc:
            return [f"{stations}:1:1: cannot read: {exc.strerror}"], kinds
    problems: list[Problem] = []
    rule_files: list[PathLike | Source] = []
    for path in files:
        try:
            source = None if path.suffix.lower() == ".csv" else load_yaml(path)
        except SourceError as exc:
            problems.append(Problem(str(path), exc.line, exc.col, "", exc.message))
            continue
        except OSError as exc:
            problems.append(Problem(str(path), 1, 1, "", f"cannot read: {exc.strerror}"))
            continue
        kind = kind_of(path, source)
        kinds[kind] += 1
        if kind == "stations":
            try:
                registry_from_source(source) if source is not None else load_registry(path)
            except RulesInvalid as exc:
                problems += exc.problems
            except OSError as exc:
                problems.append(Problem(str(path), 1, 1, "", f"cannot read: {exc.strerror}"))
        elif kind == "tests":
            assert source is not None
            problems += check_test_source(source)
        else:
            rule_files.append(source if source is not None else path)
    loaded, found = validate(rule_files, registry)
    problems = sorted(problems + found, key=lambda p: (p.file, p.line, p.col))
    if any(not p.warning for p in problems) or registry is None or not loaded:
        return [str(p) for p in problems], kinds
    try:  # the engine contract checks shapes itself; a failure here is our bug, say so
        compile_rules(loaded, registry)
    except ValueError as exc:
        return [f"{loaded[0].file}:1:1: internal error compiling rules: {exc}"], kinds
    return [str(p) for p in problems], kinds  # warnings only

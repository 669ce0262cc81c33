"""What ``rules check`` was given: rule files, station registries and rule tests, told
apart by their content, and directories expanded.

Contract:

- ``expand(paths)``: each directory becomes its ``*.yaml``/``*.yml`` files (not
  recursive, sorted by name); files are kept as given, in order, once each. A directory
  without YAML files is an error (``NoFiles``), never an empty, "valid" check.
- ``kind_of(path, source)``: ``"tests"`` for a mapping with a top-level ``tests:`` and
  no ``rules:``; ``"stations"`` for a CSV or a mapping with ``stations:`` and neither
  of the others; otherwise ``"rules"`` (so a file that is none of them gets the rule file's error).
  The name of the file plays no part: ``rules check rules/packs/*.yaml`` must work
  whatever the registries beside the rules are called.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from rules.source import Source

__all__ = ["FileKind", "NoFiles", "expand", "kind_of"]

FileKind = Literal["rules", "stations", "tests"]
YAML_SUFFIXES = (".yaml", ".yml")


class NoFiles(ValueError):
    """A directory given to check holds no YAML file."""


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files to check, directories replaced by their YAML files; raises ``NoFiles``."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in YAML_SUFFIXES)
            if not found:
                raise NoFiles(f"{path}:1:1: no .yaml or .yml file in this directory")
            out += found
        else:
            out.append(path)
    return list(dict.fromkeys(out))  # once each, first place kept


def kind_of(path: Path, source: Source | None) -> FileKind:
    """The kind of ``path`` by its content (``source``: its parsed YAML, None for a CSV)."""
    if path.suffix.lower() == ".csv":
        return "stations"
    data = source.data if source is not None else None
    if isinstance(data, dict) and "rules" not in data:
        if "tests" in data:  # before stations: a test file names its registry
            return "tests"
        if "stations" in data:
            return "stations"
    return "rules"

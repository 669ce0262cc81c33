"""``rules check PATH... [--stations S]``: validate rule files, station registries and
rule tests (told apart by content; a directory stands for its YAML files) and print
problems.

``check_main(paths, stations)`` prints one ``file:line:col: path: message`` line per
problem to stdout and returns the exit status: 0 valid (warnings only, such as a rule
that matches no station of this registry, are printed and leave it 0), 1 problems. The engine's
``vigil rules check`` calls it; ``python -m rules check`` parses arguments in ``main``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rules.api import check_files, check_paths
from rules.errors import is_warning
from rules.files import FileKind

__all__ = ["check_main", "check_paths", "main"]


def check_main(paths: list[str], stations: str | None) -> int:
    """Print the problems of ``paths`` (rule files against registry ``stations``); 0
    when valid."""
    lines, kinds = check_files(paths, stations)
    for line in lines:
        print(line)
    errors = [line for line in lines if not is_warning(line)]
    if errors:
        print(f"{len(errors)} problem{'s' if len(errors) != 1 else ''}", file=sys.stderr)
        return 1
    names: dict[FileKind, str] = {
        "rules": "rule file",
        "stations": "station registry",
        "tests": "rule test file",
    }
    counted = ", ".join(_plural(kinds[k], names[k]) for k in names if kinds[k])
    scope = f"against {stations}" if stations else "(schema only: no --stations given)"
    print(f"ok: {counted} valid {scope}", file=sys.stderr)
    return 0


def _plural(n: int, noun: str) -> str:
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rules")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate rule files")
    check.add_argument("paths", nargs="+", help="rule files, registries, rule tests, folders")
    check.add_argument("--stations", help="station registry (YAML or CSV)")
    args = parser.parse_args(argv)
    return check_main(args.paths, args.stations)

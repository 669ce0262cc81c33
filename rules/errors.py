"""Problems found in rule files and registries, and how they are written.

Every problem is one line, ``file:line:col: path.to.field: message``, lines and columns
1-based; a warning (rules that can run, but not everywhere the author meant: a
selection that matches no station of this site) is ``file:line:col: warning: path:
message`` and never stops the rules from loading. ``path`` is relative to the rule
(``levels.red.above``) for rule problems and to the station
(``stations[3].warning_level``) for registry problems; the line number tells which rule.
The text is the contract: tests assert it word for word.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from rules.source import Key, Source

__all__ = [
    "Problem",
    "RulesInvalid",
    "did_you_mean",
    "format_path",
    "is_warning",
    "problems_from_validation",
]


@dataclass(frozen=True, order=True)
class Problem:
    """One problem at one place. ``str(problem)`` is the line users see."""

    file: str
    line: int
    col: int
    path: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        if self.warning:
            where += ": warning"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class RulesInvalid(ValueError):
    """Raised by the loaders when a file has problems (errors; warnings never raise);
    ``lines`` are ready to print."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        self.lines = [str(p) for p in self.problems]
        super().__init__("\n".join(self.lines))


_WARNING = re.compile(r":\d+:\d+: warning: ")


def is_warning(line: str) -> bool:
    """Whether a printed problem line is a warning (``file:line:col: warning: ...``)."""
    return _WARNING.search(line) is not None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_path(path: Sequence[Key]) -> str:
    """``("levels", "red", "above")`` -> ``levels.red.above``; list indices as ``[i]``."""
    out = ""
    for key in path:
        if isinstance(key, int):
            out += f"[{key}]"
        else:
            out += f".{key}" if out else str(key)
    return out


def problems_from_validation(
    exc: ValidationError, source: Source, base: tuple[Key, ...], shown_from: int
) -> list[Problem]:
    """Map pydantic errors of a model validated from ``source.data[base]`` to Problems.

    ``shown_from`` is how many leading elements of the full path to leave out of the
    printed path (e.g. ``("rules", 3)`` for a rule). Custom ``unknown_field`` errors carry
    the offending key in ``ctx["field"]``; it is appended so the position is the key's.
    """
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(k for k in err["loc"] if isinstance(k, str | int))
        # pydantic tags union members in loc ('function-after[...]' etc.); keep real keys
        loc = tuple(k for k in loc if not (isinstance(k, str) and "[" in k))
        ctx = err.get("ctx") or {}
        if err["type"] == "unknown_field":
            loc = (*loc, ctx["field"])
        full = (*base, *loc)
        # a scalar that a validator wrapped in a list (``kind: x`` -> [x]) has no [0]
        while full and isinstance(full[-1], int) and full not in source.positions:
            full = full[:-1]
        line, col = source.position(full)
        problems.append(
            Problem(source.file, line, col, format_path(full[shown_from:]), _message(err))
        )
    return problems


def _message(err: object) -> str:
    assert isinstance(err, dict)
    msg = str(err["msg"])
    # pydantic prefixes messages of ValueError raised in validators; drop the prefix
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err["type"] == "missing":
        msg = "required field is missing"
    return msg

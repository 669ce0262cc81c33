"""Label matchers: the one condition language of routes, inhibitions and silences.

A matcher is written ``name OP value``, as in Alertmanager:

- ``basin=han``, ``basin!=han``: equality; a label the alert lacks is the empty string,
  so ``health=""`` means "not a health alert";
- ``station=~"HZ0.*"``, ``rule_id!~"flood\\..*"``: a regular expression that must match
  the whole value;
- ``level>=orange`` (also ``>``, ``<=``, ``<``): comparison on the four-colour scale
  ``none < blue < yellow < orange < red``; only for ``level``.

A value may be double-quoted (``name="Lake Side"``, ``\\"`` for a quote inside); quotes
are needed only around leading or trailing spaces. Backslashes are kept as written, so a
regular expression reads the same quoted or not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from engine.contracts.alerts import Level
from rules.errors import did_you_mean

__all__ = ["LEVEL_NAMES", "Matcher", "matches_all", "parse_matcher"]

Op = Literal["=", "!=", "=~", "!~", ">=", ">", "<=", "<"]

LEVEL_NAMES = tuple(level.label for level in Level)  # none, blue, yellow, orange, red

_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|>=|<=|=|>|<)\s*(.*?)\s*$")
_ORDERED = (">=", ">", "<=", "<")


@dataclass(frozen=True)
class Matcher:
    """One condition on one label; ``str()`` gives it back in the written form."""

    name: str
    op: Op
    value: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.name, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        if self.op in ("=~", "!~"):
            assert self._regex is not None
            return (self._regex.fullmatch(got) is not None) == (self.op == "=~")
        if got not in LEVEL_NAMES:
            return False  # no level (or not a level) compares with nothing
        have, want = Level.parse(got), Level.parse(self.value)
        if self.op == ">=":
            return have >= want
        if self.op == ">":
            return have > want
        if self.op == "<=":
            return have <= want
        return have < want

    def __str__(self) -> str:
        plain = self.value and self.value == self.value.strip() and '"' not in self.value
        return f"{self.name}{self.op}{self.value if plain else _quote(self.value)}"


def parse_matcher(text: object) -> Matcher:
    """``"level>=orange"`` -> Matcher. Raises ValueError saying what was expected."""
    if not isinstance(text, str):
        raise ValueError(f"expected a matcher like 'basin=han' or 'level>=orange', got {text!r}")
    found = _MATCHER.match(text)
    if found is None:
        raise ValueError(
            f"expected a matcher like 'basin=han', 'level>=orange' or 'station=~\"HZ.*\"', "
            f"got {text!r}"
        )
    name, op, raw = found.groups()
    value = _unquote(raw)
    if op in _ORDERED:
        if name != "level":
            raise ValueError(
                f"{op!r} compares warning levels and works on 'level' only, got {text!r}"
            )
        if value not in LEVEL_NAMES:
            raise ValueError(f"unknown level {value!r}{did_you_mean(value, LEVEL_NAMES)}")
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return Matcher(name, op, value, regex)  # type: ignore[arg-type]


def matches_all(matchers: tuple[Matcher, ...], labels: Mapping[str, str]) -> bool:
    """True when every matcher holds (an empty tuple matches everything)."""
    return all(m.matches(labels) for m in matchers)


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1].replace('\\"', '"')
    return raw


def _quote(value: str) -> str:
    return '"' + value.replace('"', '\\"') + '"'

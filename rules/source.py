"""YAML with positions: plain Python data plus the line and column of every value.

``load_yaml(path)`` returns a ``Source``: ``data`` (dicts, lists, scalars, as
``yaml.safe_load`` would give) and ``position(path)`` for any path into it, a tuple of
keys and list indices. Positions are 1-based ``(line, column)``. For a mapping entry the
position is its *key* (where a reader's eye goes: ``above:``); for a list item it is the
item itself. A path that does not exist (a missing key) falls back to its nearest
existing parent, so "field required" errors point at the mapping that lacks it.

Aliases are expanded into plain data, so a file of a few hundred bytes whose aliases
nest (a "billion laughs" bomb) would expand into billions of values: the expansion is
bounded, ``MAX_ALIAS_VALUES`` values built through aliases per file, past which parsing
stops with a ``SourceError`` at the alias that crossed it, before it costs memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_ALIAS_VALUES", "Pos", "Source", "SourceError", "load_yaml", "parse_yaml"]

#: Values a file may build through aliases (``*name``), all aliases together. Real rule
#: files and registries reuse a block of thresholds a few hundred times at most; a bomb
#: needs millions.
MAX_ALIAS_VALUES = 100_000

Pos = tuple[int, int]
Key = str | int

try:  # libyaml keeps marks too, and is several times faster on big registries
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _Loader = yaml.SafeLoader


class SourceError(ValueError):
    """A file that is not readable YAML; ``line`` and ``col`` are 1-based."""

    def __init__(self, file: str, line: int, col: int, message: str) -> None:
        super().__init__(f"{file}:{line}:{col}: {message}")
        self.file, self.line, self.col, self.message = file, line, col, message


@dataclass(frozen=True)
class Source:
    """Parsed YAML and the position of each value in it."""

    file: str
    data: Any
    positions: dict[tuple[Key, ...], Pos] = field(default_factory=dict)

    def position(self, path: tuple[Key, ...]) -> Pos:
        """Position of ``path``, or of its nearest existing parent; (1, 1) at worst."""
        for cut in range(len(path), -1, -1):
            pos = self.positions.get(path[:cut])
            if pos is not None:
                return pos
        return (1, 1)


def load_yaml(path: str | Path) -> Source:
    """Read and parse one YAML file. Raises SourceError on a syntax error."""
    text = Path(path).read_text(encoding="utf-8")
    return parse_yaml(text, str(path))


def parse_yaml(text: str, file: str) -> Source:
    """Parse YAML text; ``file`` is only used in positions and messages."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise SourceError(file, line, col, f"invalid YAML: {exc.problem or exc}") from exc
    positions: dict[tuple[Key, ...], Pos] = {}
    if node is None:
        return Source(file, None, positions)
    positions[()] = _pos(node)
    data = _Builder(file, positions).build(node, ())
    return Source(file, data, positions)


def _pos(node: yaml.Node) -> Pos:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    """Builds plain data from a composed node tree, counting what aliases expand to.

    The composer hands an alias back as the very node it names, so a node met a second
    time is an alias being expanded; everything built beneath it counts.
    """

    def __init__(self, file: str, positions: dict[tuple[Key, ...], Pos]) -> None:
        self.file = file
        self.positions = positions
        self._seen: set[int] = set()
        self._aliased = 0  # values built through aliases so far
        self._depth = 0  # > 0 while building beneath an alias
        self._alias_at: tuple[Key, ...] = ()  # where the outermost alias is expanded

    def build(self, node: yaml.Node, path: tuple[Key, ...]) -> Any:
        again = id(node) in self._seen
        self._seen.add(id(node))
        if again:
            if not self._depth:
                self._alias_at = path
            self._depth += 1
        try:
            if self._depth:
                self._aliased += 1
                if self._aliased > MAX_ALIAS_VALUES:
                    line, col = self._key_position(self._alias_at)
                    raise SourceError(
                        self.file,
                        line,
                        col,
                        f"YAML aliases expand to more than {MAX_ALIAS_VALUES} values "
                        "(an alias bomb?); write the values out or use fewer aliases",
                    )
            return self._build(node, path)
        finally:
            if again:
                self._depth -= 1

    def _key_position(self, path: tuple[Key, ...]) -> Pos:
        # A list item's recorded position is its node's, which for an alias is the
        # anchor's: the enclosing key is where the alias was written.
        while path and isinstance(path[-1], int):
            path = path[:-1]
        return self.positions.get(path, (1, 1))

    def _build(self, node: yaml.Node, path: tuple[Key, ...]) -> Any:
        positions, file = self.positions, self.file
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    line, col = _pos(key_node)
                    raise SourceError(file, line, col, "expected a plain key")
                key = _scalar(key_node)
                if key in out:
                    line, col = _pos(key_node)
                    raise SourceError(file, line, col, f"duplicate key {key!r}")
                positions[(*path, key)] = _pos(key_node)
                out[key] = self.build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                positions[(*path, i)] = _pos(item)
                items.append(self.build(item, (*path, i)))
            return items
        assert isinstance(node, yaml.ScalarNode)
        return _scalar(node)


_CONSTRUCTOR = yaml.SafeLoader("")
_STR = "tag:yaml.org,2002:str"
_CONSTRUCT = {
    "tag:yaml.org,2002:int": _CONSTRUCTOR.construct_yaml_int,
    "tag:yaml.org,2002:float": _CONSTRUCTOR.construct_yaml_float,
    "tag:yaml.org,2002:bool": _CONSTRUCTOR.construct_yaml_bool,
    "tag:yaml.org,2002:null": _CONSTRUCTOR.construct_yaml_null,
}


def _scalar(node: yaml.ScalarNode) -> Any:
    # The composer has already resolved the implicit tag; calling the one constructor
    # directly is what makes 10k-station registries load in a reasonable time.
    if node.tag == _STR:
        return node.value
    construct = _CONSTRUCT.get(node.tag)
    if construct is not None:
        return construct(node)
    return _CONSTRUCTOR.construct_object(node, deep=True)  # timestamps, binary …

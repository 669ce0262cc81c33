"""Alert events appended to a JSON-lines file, one event per line, rotated by size.

Each line reaches the file (the OS) at delivery, so a reader tailing the file sees it at
once; ``flush`` fsyncs, once per offset commit rather than once per event.

Bounded: when the file would pass ``max_bytes`` it becomes ``<name>.1`` (``.1`` becomes
``.2`` ... up to ``backups``, the oldest is deleted) and a new file begins, as logrotate
would. At start the sink reads only the newest ``remember`` events (from the end of the
file, and of ``.1`` if the file is younger than that), not the whole history: the keys
it hands the dispatcher are for recognising the events a restart delivers again, which
are the latest ones, and the dispatcher itself remembers no more than that.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from engine.contracts.alerts import AlertEvent

__all__ = ["JsonlSink"]

#: Read backwards in blocks of this many bytes.
_BLOCK = 1 << 20


def _tail_lines(path: Path, n: int) -> list[bytes]:
    """The last ``n`` complete lines of ``path``, oldest first; reads only what it needs."""
    with path.open("rb") as f:
        pos = f.seek(0, os.SEEK_END)
        blocks: list[bytes] = []
        newlines = 0
        # n complete lines after a first piece that may be cut: n + 1 newlines (the file
        # ends with one), read block by block from the end, joined once.
        while pos > 0 and newlines <= n:
            step = min(_BLOCK, pos)
            pos -= step
            f.seek(pos)
            blocks.append(f.read(step))
            newlines += blocks[-1].count(b"\n")
    lines = b"".join(reversed(blocks)).split(b"\n")
    if pos > 0:
        lines = lines[1:]  # the first piece may be the end of an earlier line
    return [line for line in lines if line][-n:]


class JsonlSink:
    """Appends events; remembers the keys of the newest ``remember``, across restarts."""

    name = "jsonl"

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        backups: int = 5,
        remember: int = 100_000,
    ) -> None:
        """``max_bytes``: the size at which the file rotates; ``backups`` (>= 1): how
        many rotated files are kept; ``remember``: how many of the newest events' keys
        are kept for recognising repeats."""
        if backups < 1:
            raise ValueError(f"backups must be >= 1, got {backups}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.remember = remember
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        self._keys = self._scan()
        self._file = self.path.open("a", encoding="utf-8")
        self._size = self._file.tell()
        self._dirty = False  # written since the last fsync

    def _drop_torn_tail(self) -> None:
        # A crash mid-write leaves a partial last line; its event was not acknowledged
        # and will be redelivered, so cut it off rather than append after it.
        if not self.path.exists():
            return
        with self.path.open("rb+") as f:
            end = f.seek(0, os.SEEK_END)
            if end == 0:
                return
            f.seek(end - 1)
            if f.read(1) == b"\n":
                return
            last = _tail_lines(self.path, 1)
            f.truncate(end - len(last[-1]) if last else 0)

    def _files(self) -> Iterator[Path]:
        """The current file, then the rotated ones, newest first."""
        yield self.path
        for i in range(1, self.backups + 1):
            yield self._backup(i)

    def _backup(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def _scan(self) -> set[str]:
        keys: dict[str, None] = {}  # newest first, in order
        for path in self._files():
            if len(keys) >= self.remember or not path.exists():
                break
            for line in reversed(_tail_lines(path, self.remember - len(keys))):
                try:
                    doc = json.loads(line)
                    keys.setdefault(f"{doc['fingerprint']}:{doc['at']}:{doc['level']}")
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # not an event of ours
        return set(keys)

    async def deliver(self, event: AlertEvent) -> None:
        if event.key in self._keys:
            return
        line = event.to_json() + "\n"
        size = len(line.encode("utf-8"))
        if self._size and self._size + size > self.max_bytes:
            self._rotate()
        self._file.write(line)
        self._file.flush()
        self._size += size
        self._keys.add(event.key)
        if len(self._keys) > 2 * self.remember:  # bounded memory; the newest are in the file
            self._keys = self._scan() | {event.key}
        self._dirty = True

    def _rotate(self) -> None:
        """The full file becomes ``.1``, durably, before the new one is begun."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._backup(self.backups).unlink(missing_ok=True)
        for i in range(self.backups - 1, 0, -1):
            if self._backup(i).exists():
                os.replace(self._backup(i), self._backup(i + 1))
        os.replace(self.path, self._backup(1))
        self._file = self.path.open("a", encoding="utf-8")
        self._size = 0
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the renames and the new file, durable
        finally:
            os.close(dir_fd)
        self._dirty = False

    def flush(self) -> None:
        if self._dirty:
            os.fsync(self._file.fileno())
            self._dirty = False

    def delivered_keys(self) -> set[str]:
        return set(self._keys)

    def close(self) -> None:
        self._file.close()

"""Alert events appended to a JSON-lines file, one event per line.

Each line reaches the file (the OS) at delivery, so a reader tailing the file sees it at
once; ``flush`` fsyncs, once per offset commit rather than once per event.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.contracts.alerts import AlertEvent

__all__ = ["JsonlSink"]


class JsonlSink:
    """Appends events; remembers which keys the file already has, across restarts."""

    name = "jsonl"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        self._keys = self._scan()
        self._file = self.path.open("a", encoding="utf-8")
        self._dirty = False  # written since the last fsync

    def _drop_torn_tail(self) -> None:
        # A crash mid-write leaves a partial last line; its event was not acknowledged
        # and will be redelivered, so cut it off rather than append after it.
        if not self.path.exists():
            return
        with self.path.open("rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def _scan(self) -> set[str]:
        keys: set[str] = set()
        if not self.path.exists():
            return keys
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    doc = json.loads(line)
                    keys.add(f"{doc['fingerprint']}:{doc['at']}:{doc['level']}")
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line after a crash; the event is redelivered
        return keys

    async def deliver(self, event: AlertEvent) -> None:
        if event.key in self._keys:
            return
        self._file.write(event.to_json() + "\n")
        self._file.flush()
        self._keys.add(event.key)
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            os.fsync(self._file.fileno())
            self._dirty = False

    def delivered_keys(self) -> set[str]:
        return set(self._keys)

    def close(self) -> None:
        self._file.close()

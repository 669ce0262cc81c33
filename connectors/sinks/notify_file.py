"""Notifications as JSON lines in a file (a duty log), and as lines on a terminal.

``NotificationFile`` appends ``Notification.to_dict()`` as one line and fsyncs before
``send`` returns (on a worker thread: the event loop does not wait on the disk): that
is its confirmation. It honours the idempotency key: a key already in the file (a
resend after a crash) is not written again, so the file holds each notification once.
``NotificationConsole`` prints ``render_line`` with the key and the note; a terminal
keeps nothing, so it cannot drop repeats.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from connectors.sinks.render import Lang, render_line
from engine.contracts.notification import Notification

__all__ = ["NotificationConsole", "NotificationFile"]


class NotificationFile:
    def __init__(self, name: str, path: str | Path) -> None:
        self.name = name
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._keys: set[str] = set()
        if self.path.exists():
            data = self.path.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]
            if len(whole) < len(data):  # a line torn by a crash: its entry comes again
                with self.path.open("r+b") as f:
                    f.truncate(len(whole))
            self._keys = {json.loads(line)["key"] for line in whole.splitlines() if line}
        self._file = self.path.open("a", encoding="utf-8")

    async def send(self, n: Notification) -> None:
        if n.key in self._keys:
            return
        line = json.dumps(n.to_dict(), ensure_ascii=False) + "\n"
        await asyncio.to_thread(self._append, line)  # the fsync off the event loop
        self._keys.add(n.key)

    def _append(self, line: str) -> None:
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())

    async def aclose(self) -> None:
        self._file.close()


class NotificationConsole:
    def __init__(self, name: str, lang: Lang = "en", stream: TextIO | None = None) -> None:
        self.name = name
        self.lang: Lang = lang
        self._stream = stream or sys.stdout

    async def send(self, n: Notification) -> None:
        note = f"  ({n.note})" if n.note else ""
        print(f"[{self.name}] {render_line(n, self.lang)}{note}", file=self._stream, flush=True)

    async def aclose(self) -> None:
        return None

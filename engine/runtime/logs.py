"""The process's logging: one format for Vigil's lines and Faust's, human or JSON, with
repeated warnings summarised and secrets masked.

``configure_logging(fmt, level)`` installs one handler on the root logger (on stderr),
so every library's records (Faust's, mode's, paho's) come out in the same format:

- ``human`` (the default): ``2024-07-01T12:00:00.123Z WARNING engine.runtime.topology:
  dead-letter from HZ001/water_level: late reading`` followed by the app's fields
  ``[station=HZ001 partition=2 offset=1234]`` when the record has any (``source`` and
  ``reason`` only in JSON: a human line says them in its message);
- ``json``: one JSON object a line, ``{"ts", "level", "logger", "message"}`` and the
  app's fields (``station``, ``rule``, ``partition``, ``offset``, ``source``,
  ``reason``, ``count``) when the record has them (pass them with ``extra=``).

**Rate limit.** A burst of bad input must leave a log a person can read: records of one
kind (same logger, level and message template) at WARNING or ERROR pass ``BURST`` times,
then are only counted; every ``INTERVAL_S`` seconds one summary line says how many were
held back and shows the last of them. While the burst goes on, each interval gives one
summary line and nothing else; after an interval without one, the kind passes again.
CRITICAL is never held back.

**Secrets.** ``mask_secret(value)`` registers a value (a password from the environment)
that is replaced by ``***`` in every line written, whatever logger wrote it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "APP_FIELDS",
    "BURST",
    "INTERVAL_S",
    "LogFormat",
    "RateLimit",
    "configure_logging",
    "mask_secret",
]

LogFormat = Literal["human", "json"]

#: Fields a Vigil log call may attach (``extra={"station": ...}``); both formats show them.
APP_FIELDS = ("station", "rule", "partition", "offset", "source", "reason", "count")
#: The fields a human line shows (``source`` and ``reason`` are in its message already).
HUMAN_FIELDS = ("station", "rule", "partition", "offset", "count")
#: Records of one kind let through per interval before the rest are only counted
#: (``VIGIL_LOG_BURST`` in the environment sets another number: a test harness that
#: reads every line, an operator who wants more of a burst shown).
BURST = int(os.environ.get("VIGIL_LOG_BURST", "5"))
#: Seconds of one rate-limit interval.
INTERVAL_S = 10.0

_secrets: set[str] = set()


def mask_secret(value: str | None) -> None:
    """Never write ``value`` in a log line again (lines show ``***``); empty values
    and values under 4 characters are ignored (they would mask ordinary words)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def _masked(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def _utc(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class HumanFormatter(logging.Formatter):
    """``time LEVEL logger: message [field=value ...]`` and the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = " ".join(f"{k}={getattr(record, k)}" for k in HUMAN_FIELDS if hasattr(record, k))
        if fields:
            line += f" [{fields}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return _masked(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback is the ``exc`` string)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in APP_FIELDS:
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _masked(json.dumps(doc, ensure_ascii=False, default=str))


@dataclass
class _Kind:
    window_start: float
    passed: int = 0
    suppressed: int = 0
    last: logging.LogRecord | None = None


class RateLimit(logging.Filter):
    """Lets ``burst`` records of a kind through per ``interval_s``; counts the rest.

    ``flush(now)`` returns the summary records of the intervals that have ended (the
    owner hands them to its handler); ``configure_logging`` runs it once a second on a
    daemon thread, and at exit. ``clock`` is ``time.monotonic`` outside tests.
    """

    def __init__(
        self,
        burst: int = BURST,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst, self.interval_s, self.clock = burst, interval_s, clock
        self._kinds: dict[tuple[str, int, str], _Kind] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "vigil_summary", False) or not (
            logging.WARNING <= record.levelno < logging.CRITICAL
        ):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None or (now - kind.window_start >= self.interval_s and not kind.suppressed):
                kind = self._kinds[key] = _Kind(now)
            if kind.passed < self.burst:
                kind.passed += 1
                return True
            kind.suppressed += 1
            kind.last = record
            return False

    def flush(self, now: float | None = None, *, final: bool = False) -> list[logging.LogRecord]:
        """Summaries of the kinds whose interval ended (every kind when ``final``)."""
        now = self.clock() if now is None else now
        out = []
        with self._lock:
            for key, kind in list(self._kinds.items()):
                if not final and now - kind.window_start < self.interval_s:
                    continue
                if kind.suppressed and kind.last is not None:
                    out.append(self._summary(kind, now))
                    # Still bursting: the next interval is summarised too, no new lines.
                    self._kinds[key] = _Kind(now, passed=self.burst)
                else:
                    del self._kinds[key]
        return out

    def _summary(self, kind: _Kind, now: float) -> logging.LogRecord:
        last = kind.last
        assert last is not None
        seconds = max(now - kind.window_start, 0.0)
        record = logging.makeLogRecord(
            {
                **last.__dict__,
                "msg": "%d more like this in the last %.0f s, not shown; the last: %s",
                "args": (kind.suppressed, seconds, last.getMessage()),
                "count": kind.suppressed,
                "vigil_summary": True,
                "exc_info": None,
                "created": time.time(),
            }
        )
        return record


class _Flusher(threading.Thread):
    """Writes the rate limit's summaries once a second, so that the last of a burst is
    summarised even when nothing is logged after it."""

    def __init__(self, limit: RateLimit, handler: logging.Handler) -> None:
        super().__init__(name="vigil-log-summaries", daemon=True)
        self.limit, self.handler = limit, handler
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            self.flush()

    def flush(self, *, final: bool = False) -> None:
        for record in self.limit.flush(final=final):
            self.handler.handle(record)


_flusher: _Flusher | None = None


def configure_logging(fmt: LogFormat = "human", level: int | str = logging.INFO) -> None:
    """Route every logger through one handler on stderr in ``fmt``, rate-limited.

    Idempotent: a second call replaces the first's handler.
    """
    global _flusher
    if _flusher is not None:
        _flusher.stopped.set()
        _flusher.flush(final=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    limit = RateLimit()
    handler.addFilter(limit)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Faust's and mode's own INFO lines (every service starting and stopping) would
    # bury what an operator needs; they show at debug.
    quiet = logging.getLevelName(level) if isinstance(level, str) else level
    for name in ("faust", "mode", "aiokafka"):
        logging.getLogger(name).setLevel(
            logging.NOTSET if quiet == logging.DEBUG else logging.WARNING
        )
    # Except the worker's own few lines: "[^Worker]: Ready" is when a Kafka worker has
    # started (what supervisors and the failover tests wait for).
    for name in ("faust.worker", "mode.worker"):
        logging.getLogger(name).setLevel(logging.INFO)
    _flusher = _Flusher(limit, handler)
    _flusher.start()
    atexit.register(_flusher.flush, final=True)

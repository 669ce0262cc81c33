"""The alert event: one level transition of one (rule, station, metric).

Events are idempotent by ``(fingerprint, at, level)``: the dispatcher drops an event whose key
it has already delivered, so a replay after a crash never reaches people twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, Literal

__all__ = [
    "INGESTED_HEADER",
    "MAX_RECORD_BYTES",
    "WATERMARK_HEADER",
    "AlertEvent",
    "Level",
    "fingerprint",
    "ingested_at",
    "pack_lines",
    "unpack_events",
    "watermark_of",
]

#: A record of alert events (``pack_lines``) holds at most this many bytes, unless one
#: event alone is larger; well under Kafka's default ``max.message.bytes`` (1 MB).
MAX_RECORD_BYTES = 256 * 1024

#: Header of an alerts record: the watermark (ms, decimal) of the telemetry partition of
#: the same number once the record's events were sent; every event that partition sends
#: later is expected to be later than it (``engine.evaluation.corroboration_buffer``). It sits on
#: the last record of a batch's events, or alone on a record without events (throttled,
#: ``engine.runtime.topology``), so the value stays JSON lines of events for every reader.
WATERMARK_HEADER = "vigil-watermark"

#: Header of an alerts record with events: when the telemetry record whose evaluation
#: raised them was appended (epoch ms, decimal), for the ingest-to-alert latency.
INGESTED_HEADER = "vigil-ingested-at"


class Level(IntEnum):
    """The Chinese four-colour warning scale, ordered; NONE is "all clear"."""

    NONE = 0
    BLUE = 1
    YELLOW = 2
    ORANGE = 3
    RED = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Level:
        return cls[name.upper()]


def fingerprint(rule_id: str, station: str, metric: str) -> str:
    """Stable 16-hex-digit identity of an alert series (rule + station + metric)."""
    digest = hashlib.blake2b(f"{rule_id}\x1f{station}\x1f{metric}".encode(), digest_size=8)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A level transition. Times are event time in ms since epoch, UTC.

    ``state`` is ``firing`` while ``level`` is above NONE and ``resolved`` when the
    series returns to NONE ("all clear"). ``started_at`` is when the current episode
    (first departure from NONE) began; ``at`` is this transition's time.
    """

    fingerprint: str
    rule_id: str
    station: str
    metric: str
    level: str
    previous_level: str
    state: Literal["firing", "resolved"]
    started_at: int
    at: int
    value: float
    threshold: float
    summary: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Idempotency key: the same transition always has the same key. The new level
        is part of it: a series can change twice in one ms (a window closes and lowers
        the level, the reading that closed it raises it again; a compound rule held for
        exactly its ``for``), and the second change is not a repeat of the first."""
        return f"{self.fingerprint}:{self.at}:{self.level}"

    @property
    def escalation(self) -> bool:
        return Level.parse(self.level) > Level.parse(self.previous_level)

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict, which deep-copies field by field: this runs for every
        # alert, and was 8 % of a worker's samples in bench/kafka_e2e.py.
        out = {name: getattr(self, name) for name in _FIELDS}
        out["labels"] = dict(self.labels)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlertEvent:
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> AlertEvent:
        return cls.from_dict(json.loads(text))


def pack_lines(lines: Iterable[str], max_bytes: int = MAX_RECORD_BYTES) -> list[bytes]:
    """Records of newline-separated lines (JSON events contain no raw newline), each at
    most ``max_bytes`` unless a single line is longer; in the order given."""
    records: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        raw = line.encode()
        if current and size + len(raw) + 1 > max_bytes:
            records.append(b"\n".join(current))
            current, size = [], 0
        current.append(raw)
        size += len(raw) + 1
    if current:
        records.append(b"\n".join(current))
    return records


def unpack_events(
    record: bytes, bad: list[tuple[bytes, Exception]] | None = None
) -> list[AlertEvent]:
    """The events of a record of the alerts topic (``pack_lines`` of ``to_json``), in
    order. A line that is not an event raises ``ValueError``, ``TypeError`` or
    ``RecursionError``; given a ``bad`` list, its ``(line, error)`` is appended there
    instead and the others are kept."""
    events = []
    for line in record.split(b"\n"):
        if not line:
            continue
        try:
            events.append(AlertEvent.from_json(line))
        except (ValueError, TypeError, RecursionError) as exc:  # nested past the stack
            if bad is None:
                raise
            bad.append((line, exc))
    return events


_FIELDS = tuple(f.name for f in fields(AlertEvent))


def watermark_of(headers: Any) -> int | None:
    """The ``WATERMARK_HEADER`` of a record's headers (a mapping or (name, bytes)
    pairs, as the transports give them), or None."""
    return _int_header(headers, WATERMARK_HEADER)


def ingested_at(headers: Any) -> int | None:
    """The ``INGESTED_HEADER`` of a record's headers (as ``watermark_of``), or None."""
    return _int_header(headers, INGESTED_HEADER)


def _int_header(headers: Any, wanted: str) -> int | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if name == wanted:
            return int(value)
    return None


def transition_event(
    rule_id: str, station: str, metric: str, level: Level, previous: Level,
    started_at: int, at: int, value: float, threshold: float, summary: str,
    labels: Mapping[str, str],
) -> AlertEvent:  # fmt: skip
    """A level transition of one series as an event; its state follows the new level."""
    return AlertEvent(
        fingerprint=fingerprint(rule_id, station, metric),
        rule_id=rule_id,
        station=station,
        metric=metric,
        level=level.label,
        previous_level=previous.label,
        state="resolved" if level is Level.NONE else "firing",
        started_at=started_at,
        at=at,
        value=value,
        threshold=threshold,
        summary=summary,
        labels=dict(labels),
    )

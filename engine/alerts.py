"""The alert event: one level transition of one (rule, station, metric).

Events are idempotent by ``(fingerprint, at)``: the dispatcher drops an event whose key
it has already delivered, so a replay after a crash never reaches people twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any, Literal

__all__ = ["AlertEvent", "Level", "fingerprint"]


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
        """Idempotency key: the same transition always has the same key."""
        return f"{self.fingerprint}:{self.at}"

    @property
    def escalation(self) -> bool:
        return Level.parse(self.level) > Level.parse(self.previous_level)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlertEvent:
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> AlertEvent:
        return cls.from_dict(json.loads(text))

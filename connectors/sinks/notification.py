"""The notification: what the dispatcher hands a receiver (the contract between
``dispatch/`` and the receivers under ``connectors/sinks/``)."""

# ruff: noqa: E501
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.alerts import AlertEvent

__all__ = ["Notification"]


# fmt: off
# The field lines are the contract as agreed with the receivers; kept as written.
@dataclass(frozen=True, slots=True)
class Notification:
    """One message to one receiver about one group of alerts."""
    key: str                      # idempotency key, stable across retries/restarts (outbox id)
    receiver: str                 # receiver name from the routing config
    status: Literal["firing", "resolved"]   # resolved = every alert of the group all-clear
    level: str                    # highest level among the group's firing alerts ("none" if resolved)
    group_labels: dict[str, str]  # the labels the route groups by (e.g. basin, district)
    alerts: tuple[AlertEvent, ...]  # the group's events (engine.alerts.AlertEvent), newest transition each
    links: dict[str, str]         # fingerprint -> signed acknowledge URL (may be empty)
    created_at: int               # ms since epoch, UTC (wall clock of the dispatcher)
    note: str = ""                # e.g. "escalation step 2: section head", "12 more held back by rate limit"
# fmt: on

"""The receiver contract: one notification, to one receiver, about one group of alerts.

The dispatcher (routing, grouping, outbox) builds ``Notification`` objects and hands each
to a ``Receiver``. ``send`` returns only once the far side confirmed (an HTTP 2xx with the
provider's success code, an SMTP server's 250 for the message, an MQTT PUBACK); it raises
``DeliveryError`` otherwise, and says whether trying again later can help. A receiver may
retry inside ``send`` (with backoff through an injected sleep); the outbox retries a
``retryable`` error later and parks a permanent one for a person to look at.

Delivery is at least once: the outbox may send the same notification again after a crash.
``key`` is stable across such retries, and every receiver passes it on where its far side
can see it (``Idempotency-Key`` header, ``Message-ID``, the SMS request's out-id field,
the MQTT payload), so that side can drop the repeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from engine.contracts.alerts import AlertEvent

__all__ = ["DeliveryError", "Notification", "Receiver"]


@dataclass(frozen=True, slots=True)
class Notification:
    """One message to one receiver about one group of alerts."""

    key: str  # idempotency key, stable across retries/restarts (outbox id)
    receiver: str  # receiver name from the routing config
    status: Literal["firing", "resolved"]  # resolved = every alert of the group all-clear
    level: str  # highest level among the group's firing alerts ("none" if resolved)
    group_labels: dict[str, str]  # the labels the route groups by (e.g. basin, district)
    alerts: tuple[AlertEvent, ...]  # the group's events, newest transition each
    links: dict[str, str]  # fingerprint -> signed acknowledge URL (may be empty)
    created_at: int  # ms since epoch, UTC (wall clock of the dispatcher)
    note: str = ""  # e.g. "escalation step 2: section head"
    #: fingerprint -> level label, for the alerts held firing by a latch: their data
    #: cleared (the event is the all-clear), nobody acknowledged them yet, so people
    #: must still see them at that level (``engine.dispatch.lifecycle``).
    latched: dict[str, str] = field(default_factory=dict)

    def is_firing(self, a: AlertEvent) -> bool:
        """Whether people should see ``a`` as a warning in force: its data fires, or it
        is latched."""
        return a.state == "firing" or a.fingerprint in self.latched

    def shown_level(self, a: AlertEvent) -> str:
        """The level people should see for ``a``: the latched level, else the event's."""
        return self.latched.get(a.fingerprint, a.level)

    def to_dict(self) -> dict[str, Any]:
        """The generic webhook's JSON body (documented in ``connectors/sinks/README.md``):
        every field, alerts as ``AlertEvent.to_dict`` plus their ``ack_url`` (or null)
        and ``latched`` (the level a latch holds it at, or null)."""
        return {
            "version": 1,
            "key": self.key,
            "receiver": self.receiver,
            "status": self.status,
            "level": self.level,
            "group_labels": dict(self.group_labels),
            "created_at": self.created_at,
            "note": self.note,
            "alerts": [
                {
                    **a.to_dict(),
                    "ack_url": self.links.get(a.fingerprint),
                    "latched": self.latched.get(a.fingerprint),
                }
                for a in self.alerts
            ],
            "links": dict(self.links),
        }


class Receiver(Protocol):
    """A channel to people. ``send`` must be safe to call again with the same
    notification; ``aclose`` releases connections and may not be called if the process
    dies."""

    name: str

    async def send(self, n: Notification) -> None: ...

    async def aclose(self) -> None: ...


class DeliveryError(Exception):
    """The far side did not confirm. ``retryable`` is False for a permanent refusal
    (a 4xx-style answer: bad template, bad credentials, unknown recipient), which the
    outbox must not retry forever; True for an outage (5xx, timeout, connection refused,
    the provider's rate limit)."""

    def __init__(self, receiver: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"receiver {receiver!r}: {message}")
        self.receiver = receiver
        self.retryable = retryable

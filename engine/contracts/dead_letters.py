"""Dead-letter records: their headers, and the class of a reason.

A dead-letter record (``<id>-dead-letter``) holds the raw bytes of what was rejected, the
reason in the ``vigil-reason`` header (free text: it quotes the offending value), the
source (an MQTT topic, ``station/metric``, ``topic/partition@offset``) in
``vigil-source`` and the gateway's clock when it was rejected (epoch ms, decimal) in
``vigil-received-at``.

The reason's text is unbounded (it quotes device input), so what counts and filters
dead letters is its *class*: one of ``REASON_CLASSES``, found from the text's start. A
reason whose start is not listed is ``other``; a connector that adds a kind of
rejection adds its prefix here.
"""

from __future__ import annotations

__all__ = [
    "REASON_CLASSES",
    "REASON_HEADER",
    "RECEIVED_AT_HEADER",
    "SOURCE_HEADER",
    "reason_class",
]

REASON_HEADER = "vigil-reason"
SOURCE_HEADER = "vigil-source"
RECEIVED_AT_HEADER = "vigil-received-at"

#: (class, the reason texts' starts that belong to it), first match wins.
_PREFIXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("not_json", ("payload is not JSON", "payload is not UTF-8")),
    ("bad_shape", ("payload is an empty list", "expected an object", "object has no ")),
    ("bad_value", ("value ",)),
    ("bad_timestamp", ("ts ",)),
    ("unknown_station", ("unknown station",)),
    ("bad_topic", ("topic ",)),
    ("late", ("late for",)),
    ("out_of_order", ("out of order",)),
    ("ingest_error", ("ingest error",)),
    ("bad_batch", ("bad telemetry batch",)),
    ("bad_alert_event", ("bad alert event",)),
)

#: Every class ``reason_class`` can return: a bounded label set for metrics.
REASON_CLASSES: tuple[str, ...] = (*(c for c, _ in _PREFIXES), "other")


def reason_class(reason: str) -> str:
    """The class of a dead-letter reason (``value must be a number, got 'x'`` ->
    ``bad_value``); ``other`` for a reason of no known kind."""
    for name, starts in _PREFIXES:
        if reason.startswith(starts):
            return name
    return "other"

"""The corroboration topic's records and the stage's tables, shared by both sides.

A record of ``<id>-corroboration`` is lines joined by ``\\n``: a routed event
``rule\\x1fgroup\\x1eevent JSON``, the sources' watermarks
``\\x1dmarks\\x1e{"<partition>": <watermark ms>, ...}``, or a tick ``\\x1dtick\\x1e``.
"""

from __future__ import annotations

from engine.contracts.alerts import Level
from engine.evaluation.corroboration import GroupChange, Taken
from engine.evaluation.corroboration_buffer import Pending

__all__ = [
    "MARKS",
    "MARK_INTERVAL_S",
    "RS",
    "SEP",
    "TABLES",
    "TICK",
    "decode_taken",
    "encode_taken",
    "pending_key",
]

#: The stage's Faust tables; their changelogs are ``<app id>-<name>-changelog``, created
#: with the other topics (``engine.runtime.kafka.topics``): Faust itself creates them only
#: when first written, and an agent that writes before its metadata shows the partitions
#: crashes (PartitionsMismatch) half-way through an event.
TABLES = (
    "corroboration-stations",
    "corroboration-firing",
    "corroboration-pending",
    "corroboration-watermarks",
    "corroboration-history",
)

#: Wall seconds between records that carry only watermarks (or a tick), per partition.
MARK_INTERVAL_S = 1.0

SEP = "\x1f"  # between the parts of a key: rule, group, station, time
RS = "\x1e"  # between a routed event's key and its JSON (which escapes control chars)
MARKS = "\x1dmarks"  # the key of a line of source partitions' watermarks
TICK = "\x1dtick"  # the key of a line that only makes the partition look at the clock


def pending_key(held: Pending) -> str:
    """The ``corroboration-pending`` key of a held event (``corroboration-history``'s
    of a taken one)."""
    at, rule_id, group, station = held
    return SEP.join((rule_id, group, station, str(at)))


def encode_taken(taken: Taken) -> list[object]:
    """A ``corroboration-history`` value: ``[level, entry before, latest before,
    firing since before, change]`` (ms or null; change ``[firing, at, since, count]``
    or null): a few dozen bytes."""
    c = taken.change
    change = None if c is None else [c.firing, c.at, c.since, c.count]
    return [taken.level.label, taken.entered, taken.last, taken.firing_since, change]


def decode_taken(value: list[object]) -> Taken:
    """The ``Taken`` of an ``encode_taken`` value."""
    level, entered, last, firing_since, change = value
    assert isinstance(level, str)
    return Taken(
        Level.parse(level),
        entered,  # type: ignore[arg-type]
        last,  # type: ignore[arg-type]
        firing_since,  # type: ignore[arg-type]
        None if change is None else GroupChange(*change),  # type: ignore[misc]
    )

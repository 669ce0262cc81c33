"""The corroboration topic's records and the stage's tables, shared by both sides.

A record of ``<id>-corroboration`` is lines joined by ``\\n``: a routed event
``rule\\x1fgroup\\x1eevent JSON``, the sources' watermarks
``\\x1dmarks\\x1e{"<partition>": <watermark ms>, ...}``, or a tick ``\\x1dtick\\x1e``.

The stage's state is in changelog-backed Faust tables (``TABLES``), a small entry per
key: ``corroboration-stations`` maps ``rule\\x1fgroup\\x1fstation`` to ``[entry time or
null, time of the station's latest event]`` (ms),
``corroboration-firing`` maps ``rule\\x1fgroup`` to ``[the time the group's alert
started or null, the newest change sent as [firing, at, since] or null]`` (what a
dispatcher holds, so that a late event that withdraws it is restated: ``GroupState.told``),
and ``corroboration-pending`` holds the events not applied yet, ``rule\\x1fgroup\\x1f
station\\x1fat`` to ``[level, metric]``, written when an event is held and deleted when
it is applied: two changelog records per routed event more than before, producer
records (batched by the client), not records the agents consume. So a held event
survives a crash or a failover exactly as the group state does, and the consumer's
offsets commit past it as usual (holding the commit back instead would stall Faust's
rebalances, which wait for every delivered record to be acknowledged). The watermarks
survive too (``corroboration-watermarks``: one entry per partition, the latest mark of
each source, written after each record that moved them): else a restart would hold
its events until each source sent a newer mark, or, on a stream that has ended, for
the idle time, and a gateway restarted more often than that would never let them go.
``corroboration-history`` holds each group's history of transitions taken
(``GroupState.history``, for late events), ``rule\\x1fgroup\\x1fstation\\x1fat`` to
``encode_taken``'s few numbers: written when a transition is taken (and again where a
late event changes it), deleted once older than ``corroboration_history_s`` before the
group's newest.
"""

from __future__ import annotations

from typing import Any

from engine.contracts.alerts import Level
from engine.evaluation.corroboration import GroupChange, Taken, Told
from engine.evaluation.corroboration_buffer import Pending

__all__ = [
    "MARKS",
    "MARK_INTERVAL_S",
    "RS",
    "SEP",
    "TABLES",
    "TICK",
    "decode_firing",
    "decode_taken",
    "encode_firing",
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


def encode_firing(since: int | None, told: Told | None) -> list[object] | None:
    """A group's ``corroboration-firing`` entry: ``[firing since, told]`` (ms or null;
    told ``[firing, at, since]`` or null); None (no entry) when both are null."""
    if since is None and told is None:
        return None
    return [since, None if told is None else list(told)]


def decode_firing(value: int | list[Any]) -> tuple[int | None, Told | None]:
    """``(firing since, told)`` from a ``corroboration-firing`` entry; one written
    before ``told`` was kept is the start time alone."""
    if isinstance(value, int):
        return value, None
    since, told = value
    return since, None if told is None else (bool(told[0]), int(told[1]), int(told[2]))

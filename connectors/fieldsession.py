"""What a field protocol's session (SL 651, HJ 212) works with: the connection it serves
(:class:`Peer`), the station identities it checks frames against (:class:`Identity`), and
what it makes of frames (:class:`FieldMessage`), as the :class:`Protocol` contract says.

``connectors.fieldserver.FieldServer`` runs the connections and hands the messages on;
a protocol's session needs only this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol as TypingProtocol

from connectors.decoded import Columns
from connectors.ingest import Inbound, Reading
from engine.contracts.batch import ReadingBlock

__all__ = ["FieldMessage", "Identity", "Peer", "Protocol"]


@dataclass(frozen=True)
class Identity:
    """A protocol station identity mapped to a Vigil station, with its password."""

    station: str  # the Vigil station id
    password: str


@dataclass
class FieldMessage(Inbound):
    """A frame, decoded on arrival (or a read's frames taken together): its readings
    (Vigil station ids) as tuples and as ``columns``, or ``reason`` to dead-letter it.
    ``ack`` (set by the server) writes the reply, if any."""

    readings: Sequence[Reading | ReadingBlock] = field(default_factory=list)
    columns: list[Columns] = field(default_factory=list)
    reason: str | None = None
    reply: Callable[[], bytes] | None = None  # built when durable (the time in it is then)


@dataclass
class Peer:
    """One connection, as a protocol session sees it."""

    protocol: str  # "sl651" | "hj212"
    address: str  # "host:port"
    station: str | None = None  # the Vigil station of the last accepted frame
    identity: str | None = None  # its protocol identity (SL 651 address, HJ 212 MN)

    def source(self) -> str:
        """What a dead letter names as its source."""
        who = f" station {self.station or '?'} ({self.identity})" if self.identity else ""
        return f"{self.protocol} {self.address}{who}"


class Protocol(TypingProtocol):
    """A connection's protocol session (state such as multi-packet reassembly)."""

    def handle(self, frame: bytes, peer: Peer, received_ms: int) -> list[FieldMessage]:
        """One complete frame -> messages (none for a packet awaiting the rest). Must
        never raise for bad input: a rejection is a message with ``reason``."""
        ...

    def handle_many(self, frames: list[bytes], peer: Peer, received_ms: int) -> list[FieldMessage]:
        """A read's complete frames, in order -> messages: ``handle`` 's, frame by frame,
        or fewer (frames taken together), with the replies in the frames' order."""
        ...

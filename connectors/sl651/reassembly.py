"""Multi-packet (M3) SL 651 messages: packets in, whole messages out, in bounded memory.

A station splits a long message (a picture) into packets that start with SYN and carry
(total, sequence); all but the last end with ETB. Each packet is a frame with its own
CRC, so packets arrive checked; the Reassembler joins their fragments in sequence order
and decodes the body once every packet is in.

Bounds: at most ``max_messages`` messages in progress (one station per connection sends
one at a time, so a handful is plenty) and ``max_bytes`` per message. A packet past the
bounds evicts the oldest message or is refused; either way memory stays bounded whatever
a sender does.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from connectors.decoded import CST_OFFSET_MIN, FrameError, Rejection
from connectors.sl651.body import decode_body
from connectors.sl651.frame import Frame

__all__ = ["Reassembler"]


class Reassembler:
    """``feed(packet)`` -> the whole message as a Frame, a Rejection, or None (waiting)."""

    def __init__(
        self, max_messages: int = 8, max_bytes: int = 1 << 20, offset_min: int = CST_OFFSET_MIN
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.offset_min = offset_min
        self._open: OrderedDict[tuple[str, int, int], dict[int, bytes]] = OrderedDict()

    def __len__(self) -> int:
        """Messages in progress."""
        return len(self._open)

    def feed(self, frame: Frame) -> Frame | Rejection | None:
        if frame.packet is None:
            raise ValueError("Reassembler.feed takes packets (frames that start with SYN)")
        total, seq = frame.packet
        key = (frame.station, frame.function, total)
        parts = self._open.pop(key, None)
        if parts is None:
            parts = {}
            while len(self._open) >= self.max_messages:
                self._open.popitem(last=False)
        parts[seq] = frame.fragment
        if sum(map(len, parts.values())) > self.max_bytes:
            return Rejection(
                f"multi-packet message over {self.max_bytes} bytes at packet {seq} of {total}",
                frame.raw,
            )
        if len(parts) < total:
            self._open[key] = parts  # re-inserted last: the most recently fed
            return None
        payload = b"".join(parts[i] for i in range(1, total + 1))
        try:
            body = decode_body(payload, "up", frame.function, frame.station, self.offset_min)
        except FrameError as exc:
            return Rejection(f"multi-packet message: {exc}", payload)
        return replace(frame, packet=None, body=body, fragment=b"", raw=payload)

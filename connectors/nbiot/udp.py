"""Raw UDP datagrams, for devices that do not speak CoAP. A datagram is::

    identity length (u8) | identity (ASCII) | payload

where the payload is what the device would POST over CoAP (sealed if it has a key).
The answer, once the datagram is durable (readings or dead letter), is one datagram:
0x06 (taken) or 0x15 (rejected: dead-lettered), followed by the sealed payload's
counter (u32, big-endian) when there was one, so a device can match it.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from typing import cast

from connectors.nbiot.uplink import Uplink

__all__ = ["ACK", "NAK", "UdpUplinks"]

ACK, NAK = 0x06, 0x15


class UdpUplinks(asyncio.DatagramProtocol):
    def __init__(self, submit: Callable[[Uplink], None]) -> None:
        self._submit = submit
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's UDP transport does not subclass asyncio's.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        up = Uplink(
            source=f"nbiot:udp:{addr[0]}:{addr[1]}",
            payload=data,
            received_ms=int(time.time() * 1000),
            ack=None,
            path="udp",
        )
        up.ack = lambda: self._answer(up, addr)
        self._submit(up)

    def _answer(self, up: Uplink, addr: tuple[str, int]) -> None:
        reply = bytes([ACK if up.outcome is None else NAK])
        if up.counter is not None:
            reply += struct.pack(">I", up.counter)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(reply, addr)

"""HJ 212-2017 over TCP: the framing and the per-connection session of the gateway's
HJ 212 server (``connectors.fieldserver.FieldServer`` does connections and limits).

A packet's MN must be in ``identities`` (from the station registry's ``hj212: {mn,
password | password_env}``) with the same PW, else it is dead-lettered and never
ingested. Readings are renamed to the Vigil station. A packet whose Flag asks for a
reply (bit 0) gets, once durable, the data response (CN 9014) for an upload of data
(CN 2xxx) and the request response (CN 9011, QnRtn 1) for anything else. Pollutant
fields with no Vigil metric (``codes.POLLUTANTS``) are counted per station and code; the
first of each is dead-lettered once with the packet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

from connectors.decoded import CST_OFFSET_MIN, Rejection
from connectors.fieldsession import FieldMessage, Identity, Peer
from connectors.hj212.codes import DATA_COMMANDS, FIELD_SUFFIX, POLLUTANTS
from connectors.hj212.frame import Packet, decode
from connectors.hj212.reply import data_response, request_response, wants_reply
from connectors.ingest import Reading

__all__ = ["Hj212Framing", "Hj212Session"]


class Hj212Framing:
    """``##`` + 4-digit segment length + segment + 4 CRC characters + CRLF. A packet
    ends where its length says if a CRLF is there, else at its first CRLF (devices send
    wrong lengths: the decoder then rejects it, naming both); a ``##`` before that CRLF
    begins the next packet."""

    starts = (b"##",)

    def size(self, buf: bytes | bytearray) -> int | None:
        if len(buf) < 6:
            return None
        digits = bytes(buf[2:6])
        if digits.isdigit():
            declared = 6 + int(digits) + 4 + 2
            if buf[declared - 2 : declared] == b"\r\n":
                return declared
        end, nxt = buf.find(b"\r\n", 2), buf.find(b"##", 2)
        if nxt >= 0 and (end < 0 or nxt < end):
            return nxt
        return end + 2 if end >= 0 else None

    def complete(self, frame: bytes) -> bool:
        return True  # ``size`` found its end; the decoder checks the rest


class Hj212Session:
    """One connection: decode, check identity, rename, reply."""

    def __init__(
        self,
        identities: Callable[[], Mapping[str, Identity]],
        unmapped: Counter[tuple[str, str]],
        offset_min: int = CST_OFFSET_MIN,
    ) -> None:
        self.identities = identities
        self.unmapped = unmapped
        self.offset_min = offset_min

    def handle(self, raw: bytes, peer: Peer, received_ms: int) -> list[FieldMessage]:
        packet = decode(raw, self.offset_min)
        if isinstance(packet, Rejection):
            return [FieldMessage(peer.source(), raw, received_ms, None, reason=packet.reason)]
        who = self.identities().get(packet.mn)
        if who is None:
            reason = f"unknown HJ 212 station MN={packet.mn}"
            return [FieldMessage(peer.source(), raw, received_ms, None, reason=reason)]
        if packet.header.get("PW") != who.password:
            reason = f"wrong password for HJ 212 station MN={packet.mn} ({who.station})"
            return [FieldMessage(peer.source(), raw, received_ms, None, reason=reason)]
        peer.station, peer.identity = who.station, packet.mn
        readings: list[Reading] = [
            (who.station, r.metric, r.ts_ms, r.value, r.quality) for r in packet.readings
        ]
        out = FieldMessage(peer.source(), raw, received_ms, None, readings=readings)
        if wants_reply(packet):
            reply = data_response(packet) if packet.cn.startswith("2") else request_response(packet)
            out.reply = lambda: reply
        return [out, *self._unmapped(packet, who.station, peer, received_ms)]

    def handle_many(self, frames: list[bytes], peer: Peer, received_ms: int) -> list[FieldMessage]:
        """``handle``, packet by packet."""
        return [m for raw in frames for m in self.handle(raw, peer, received_ms)]

    def _unmapped(
        self, packet: Packet, station: str, peer: Peer, received_ms: int
    ) -> list[FieldMessage]:
        """Value fields of a data packet with no Vigil metric: counted; the first of
        each code per station dead-lettered with the packet."""
        if packet.cn not in DATA_COMMANDS:
            return []
        out = []
        for key in packet.cp:
            code, dash, suffix = key.rpartition("-")
            if not dash or suffix not in FIELD_SUFFIX or code in POLLUTANTS:
                continue
            count_key = (station, code)
            self.unmapped[count_key] += 1
            if self.unmapped[count_key] == 1:
                reason = (f"HJ 212 code {code} has no Vigil metric: not ingested "
                          f"(counted from now on, not dead-lettered again)")  # fmt: skip
                out.append(FieldMessage(peer.source(), packet.raw, received_ms, None,
                                        reason=reason))  # fmt: skip
        return out

"""SL 651-2014 over TCP: the framing and the per-connection session of the gateway's
SL 651 server (``connectors.fieldserver.FieldServer`` does connections and limits).

A frame's station address must be in ``identities`` (from the station registry's
``sl651: {address, password}``) with the same password, else the frame is
dead-lettered (``unknown SL 651 station 0012345678``, ``wrong password for SL 651
station 0012345678 (SK01)``) and never ingested. Its readings are renamed to the Vigil
station. An uplink report that asks for confirmation (``reply.wants_ack``) gets the
acknowledgement (ESC: the station may stay online) once durable; a keep-alive, a packet
that is not the last of its message and a downlink frame get none. Elements that feed
no Vigil metric (``elements.ELEMENTS``) are counted per station and element; the first
of each is dead-lettered once with the frame, so an operator sees what is not ingested.

An uplink report's serial number (流水号, 1-65535) goes to ``on_sequence`` (device
``"<Vigil station> (SL 651 <address>)"``), whose gaps are messages lost on the way; a
keep-alive, which repeats the last serial, does not.

``handle_many`` takes a read's frames at once: the batch decoder
(``connectors.sl651.batch``) decodes them together, and the common ones (uplink HEX
reports of a known station, with the right password, every value feeding a metric)
become one message, their readings together and their acknowledgements in frame
order; any other frame goes through ``handle``'s path, in its place in the order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from connectors.decoded import CST_OFFSET_MIN, Columns, Rejection
from connectors.fieldsession import FieldMessage, Identity, Peer
from connectors.ingest import Reading
from connectors.sl651.batch import Decoded, decode_many
from connectors.sl651.batch_kernel import OK
from connectors.sl651.elements import ELEMENTS
from connectors.sl651.frame import ETX, Frame, decode
from connectors.sl651.reassembly import Reassembler
from connectors.sl651.reply import ack_frame, acks_hex, bcd_time, wants_ack

__all__ = ["Sequences", "Sl651Framing", "Sl651Session"]

#: ``on_sequence(device, serials, received_ms)``: synchronous, on the event loop.
Sequences = Callable[[str, list[int], int], None]

_HEX, _ASCII = b"\x7e\x7e", b"\x01"
_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")
_END_CHARS = frozenset({0x03, 0x17, 0x05, 0x06, 0x15, 0x04, 0x1B})


class Sl651Framing:
    """HEX frames (7E7E, length in bytes 11-12, then end char and 2-byte CRC) and ASCII
    frames (SOH, 4 hex length characters at 19, end char and 4 CRC characters)."""

    starts = (_HEX, _ASCII)

    def size(self, head: bytes | bytearray) -> int | None:
        if head[:1] == _ASCII:
            # SOH is one byte, frequent in binary data: the header's hex characters
            # (centre, station, password, function, length) tell a frame from a byte.
            text = bytes(head[1:23])
            if not all(c in _HEX_DIGITS for c in text):
                raise ValueError("not an ASCII header")
            if len(head) < 24:
                return None
            return 24 + (int(text[18:22], 16) & 0x0FFF) + 1 + 4
        if len(head) < 14:
            return None
        dirlen = head[11] << 8 | head[12]
        if head[13] == 0x02:
            return 14 + (dirlen & 0x0FFF) + 3
        if head[13] == 0x16:  # SYN: multi-packet, all 16 bits are the length
            return 14 + dirlen + 3
        raise ValueError("no STX or SYN at byte 13")

    def complete(self, frame: bytes) -> bool:
        end = frame[-5] if frame[:1] == _ASCII else frame[-3]
        return end in _END_CHARS


class Sl651Session:
    """One connection: decode, check identity, rename, reassemble, reply."""

    def __init__(
        self,
        identities: Callable[[], Mapping[str, Identity]],
        unmapped: Counter[tuple[str, str]],
        offset_min: int = CST_OFFSET_MIN,
        on_sequence: Sequences | None = None,
    ) -> None:
        self.identities = identities  # read per frame: a registry reload swaps it
        self.unmapped = unmapped  # shared by the server's sessions
        self.offset_min = offset_min
        self.reassembler = Reassembler(offset_min=offset_min)
        self.on_sequence = on_sequence

    def handle(self, raw: bytes, peer: Peer, received_ms: int) -> list[FieldMessage]:
        return self._handle(raw, decode(raw, self.offset_min), peer, received_ms)

    def handle_many(self, frames: list[bytes], peer: Peer, received_ms: int) -> list[FieldMessage]:
        """A read's complete frames -> messages (see the module doc): what ``handle``
        frame by frame gives, the common frames' readings and replies in one message."""
        d = decode_many(frames, self.offset_min)
        ids = self.identities()
        # Python ints once per read, and a frame's identity checked once per (address,
        # password) of the read (a connection is one station): not NumPy scalars per field.
        status, head = d.status.tolist(), d.head.tolist()
        known: dict[tuple[int, int], tuple[str, Identity, str] | None] = {}
        out: list[FieldMessage] = []
        taken = _Taken()
        for i, (address, centre, password, function, end, serial, _, unmapped) in enumerate(head):
            got = None
            if status[i] == OK and not unmapped:
                try:
                    got = known[address, password]
                except KeyError:
                    got = known[address, password] = _known(ids, address, password)
            if got is None:
                taken = self._flush(taken, d, peer, received_ms, out)  # replies in frame order
                out += self._handle(frames[i], d.frame(i), peer, received_ms)
                continue
            station, who, device = got
            peer.station, peer.identity = who.station, station
            suspect = function == 0x30  # a test report: SUSPECT quality (Decoded.quality)
            # (A frame not taken flushes what was: the frames of a run are consecutive.)
            if taken.station != who.station or taken.suspect != suspect:
                taken.rows(d)
                taken.first, taken.station, taken.suspect = i, who.station, suspect
            taken.last = i
            serials = taken.serials.get(device)
            if serials is None:
                serials = taken.serials[device] = []
            serials.append(serial)
            if end == ETX:  # the last packet of an uplink report: it asks for a reply
                taken.ack(station, centre, password, function, serial)
        self._flush(taken, d, peer, received_ms, out)
        return out

    def _flush(
        self, taken: _Taken, d: Decoded, peer: Peer, received_ms: int, out: list[FieldMessage]
    ) -> _Taken:
        """The frames taken so far as one message (never dead-lettered: no bytes kept);
        returns a new, empty ``_Taken``."""
        taken.rows(d)
        if self.on_sequence is not None:
            for device, serials in taken.serials.items():
                self.on_sequence(device, serials, received_ms)
        if taken.readings or taken.columns or taken.acks:
            m = FieldMessage(peer.source(), b"", received_ms, None, readings=taken.readings,
                             columns=taken.columns)  # fmt: skip
            if taken.acks:
                m.reply = _acks(taken.acks, self.offset_min)
            out.append(m)
        return _Taken()

    def _handle(
        self, raw: bytes, decoded: Frame | Rejection, peer: Peer, received_ms: int
    ) -> list[FieldMessage]:
        if isinstance(decoded, Rejection):
            return [FieldMessage(peer.source(), raw, received_ms, None, reason=decoded.reason)]
        frame = decoded
        who = self.identities().get(frame.station)
        if who is None:
            reason = f"unknown SL 651 station {frame.station}"
            return [FieldMessage(peer.source(), raw, received_ms, None, reason=reason)]
        if frame.password != who.password.upper():
            reason = f"wrong password for SL 651 station {frame.station} ({who.station})"
            return [FieldMessage(peer.source(), raw, received_ms, None, reason=reason)]
        peer.station, peer.identity = who.station, frame.station
        if frame.packet is not None:
            whole = self.reassembler.feed(frame)
            if whole is None:  # more packets to come; the last one is acknowledged
                return [FieldMessage(peer.source(), raw, received_ms, None)]
            if isinstance(whole, Rejection):
                return [FieldMessage(peer.source(), whole.raw, received_ms, None,
                                     reason=whole.reason)]  # fmt: skip
            frame = whole
        is_report = frame.direction == "up" and frame.function != 0x2F  # not a keep-alive
        if self.on_sequence is not None and is_report and frame.body is not None:
            device = f"{who.station} (SL 651 {frame.station})"
            self.on_sequence(device, [frame.body.serial], received_ms)
        readings: list[Reading] = [
            (who.station, r.metric, r.ts_ms, r.value, r.quality) for r in frame.readings
        ]
        out = [FieldMessage(peer.source(), raw, received_ms, None, readings=readings)]
        if frame.direction == "up" and wants_ack(frame) and frame.body is not None:
            out[0].reply = _ack(frame, frame.body.serial, self.offset_min)
        out += self._unmapped(frame, who.station, peer, received_ms)
        return out

    def _unmapped(
        self, frame: Frame, station: str, peer: Peer, received_ms: int
    ) -> list[FieldMessage]:
        """Elements with a value but no Vigil metric: counted; the first of each per
        station dead-lettered with the frame."""
        if frame.body is None or frame.function == 0x2F:
            return []
        out = []
        for group in frame.body.groups:
            for v in group.values:
                element = ELEMENTS.get(int(v.element, 16)) if len(v.element) == 2 else None
                if element is not None and (element.metric is not None or v.element in _NOT_DATA):
                    continue
                key = (station, v.element)
                self.unmapped[key] += 1
                if self.unmapped[key] == 1:
                    what = f"0x{v.element} ({v.code})" if v.code else f"0x{v.element}"
                    reason = (f"SL 651 element {what} has no Vigil metric: not ingested "
                              f"(counted from now on, not dead-lettered again)")  # fmt: skip
                    out.append(FieldMessage(peer.source(), frame.raw, received_ms, None,
                                            reason=reason))  # fmt: skip
        return out


#: Elements that structure a report rather than carry a measurement.
_NOT_DATA = frozenset({"04", "05", "F2", "F3"})


def _known(
    ids: Mapping[str, Identity], address: int, password: int
) -> tuple[str, Identity, str] | None:
    """(SL 651 address as 10 hex digits, its identity, its serials' device) when
    ``address`` is a known station's and ``password`` (as the kernel reads it) is that
    station's; else None."""
    station = f"{address:010X}"
    who = ids.get(station)
    if who is None or f"{password:04X}" != who.password.upper():
        return None
    return station, who, f"{who.station} (SL 651 {station})"


class _Taken:
    """Frames of a read taken together so far: readings (as columns; as tuples for a
    test report's, SUSPECT), serials per device, replies (runs of one header: station,
    centre, password, function, serials); frames ``first`` to ``last`` (of ``station``,
    ``suspect``) are the run whose readings are not yet taken (none: ``first`` -1)."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.columns: list[Columns] = []
        self.serials: dict[str, list[int]] = {}
        self.acks: list[tuple[str, int, str, int, list[int]]] = []
        self.first, self.last, self.station, self.suspect = -1, -2, "", False

    def rows(self, d: Decoded) -> None:
        if self.first >= 0:
            if self.suspect:
                self.readings += d.rows(self.first, self.station, self.last)
            else:
                self.columns.append(d.columns(self.first, self.station, self.last))
            self.first = -1

    def ack(self, station: str, centre: int, password: int, function: int, serial: int) -> None:
        """A report to acknowledge (``password`` as the kernel reads it: a station's
        frames taken have its one password)."""
        if self.acks:
            a = self.acks[-1]
            if a[0] == station and a[1] == centre and a[3] == function:
                a[4].append(serial)
                return
        self.acks.append((station, centre, f"{password:04X}", function, [serial]))


def _acks(acks: list[tuple[str, int, str, int, list[int]]], offset_min: int) -> Callable[[], bytes]:
    """The acknowledgements of a read's reports, ``ack_hex`` 's bytes for each serial of
    each (station, centre, password, function, serials), with one send time: built when
    durable."""

    def build() -> bytes:
        now = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=offset_min)
        return acks_hex(acks, bcd_time(now))

    return build


def _ack(frame: Frame, serial: int, offset_min: int) -> Callable[[], bytes]:
    def build() -> bytes:
        now_local = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=offset_min)
        return ack_frame(frame, serial, now_local)

    return build

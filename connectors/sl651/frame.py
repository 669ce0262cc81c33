"""SL 651-2014 frames: bytes -> :class:`Frame` or :class:`Rejection` (FACTS.md §1.1).

HEX/BCD mode: ``7E7E`` address(6) password(2) function(1) direction+length(2) STX|SYN
[packet total+sequence(3) after SYN] body end-char CRC(2, big-endian, CRC-16/MODBUS
over everything before it). ASCII mode is the same frame written in characters: SOH,
hex or decimal digits for the header, the body as space-separated tokens and the CRC as
four hex characters. Uplink addresses are centre then station; downlink, the reverse.

A frame after SYN is one packet of a multi-packet (M3) message: its body is a fragment,
decoded once :class:`connectors.sl651.reassembly.Reassembler` has every packet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import crcmod.predefined

from connectors.decoded import CST_OFFSET_MIN, FrameError, Reading, Rejection
from connectors.sl651.body import Body, decode_ascii_body, decode_body

__all__ = ["FUNCTIONS", "Frame", "crc16", "decode", "decode_ascii", "decode_hex"]

#: CRC-16/MODBUS (reflected 0xA001, init 0xFFFF); SL 651 sends it high byte first.
crc16 = crcmod.predefined.mkCrcFun("modbus")

STX, SYN, ETX, ETB, SOH = 0x02, 0x16, 0x03, 0x17, 0x01
#: End characters (Table 10). Up: ETX, ETB; down: ENQ, ACK, NAK, EOT, ESC. Both sets are
#: accepted either way: field frames exist with a downlink end on an uplink header.
END_CHARS = {0x03: "ETX", 0x17: "ETB", 0x05: "ENQ", 0x06: "ACK", 0x15: "NAK", 0x04: "EOT",
             0x1B: "ESC"}  # fmt: skip

FUNCTIONS: dict[int, str] = {
    0x2F: "link keep-alive",
    0x30: "test report",
    0x31: "uniform-interval report",
    0x32: "timed report",
    0x33: "added report",
    0x34: "hourly report",
    0x35: "manual entry report",
    0x36: "picture report",
    0x37: "real-time data (query answer)",
    0x38: "period data (query answer)",
    0x39: "manual entry (query answer)",
    0x3A: "specified elements (query answer)",
    0x40: "write basic configuration",
    0x41: "read basic configuration",
    0x42: "write run-time configuration",
    0x43: "read run-time configuration",
    0x44: "pump real-time data",
    0x45: "software version",
    0x46: "status and alarms",
    0x47: "initialise storage",
    0x48: "factory reset",
    0x49: "change password",
    0x4A: "set clock",
    0x4B: "set IC card state",
    0x4C: "pump switch",
    0x4D: "valve switch",
    0x4E: "gate switch",
    0x4F: "water volume set point",
    0x50: "event log",
    0x51: "read clock",
}


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. ``station`` is the 10-hex-digit address of the header."""

    encoding: str  # "hex" | "ascii"
    direction: str  # "up" | "down"
    centre: int
    station: str
    password: str  # 4 hex digits
    function: int
    end: str  # the end character's name (ETX, ETB, ESC ...)
    crc: int
    #: (total, sequence) for a packet of a multi-packet message, else None.
    packet: tuple[int, int] | None
    #: the decoded body; None for a packet (only the whole message has one).
    body: Body | None
    fragment: bytes = b""  # a packet's share of the message body
    raw: bytes = field(default=b"", repr=False)

    @property
    def readings(self) -> list[Reading]:
        return self.body.readings if self.body is not None else []


def _fail(raw: bytes, reason: str) -> Rejection:
    return Rejection(reason, raw)


def decode(raw: bytes, offset_min: int = CST_OFFSET_MIN) -> Frame | Rejection:
    """Either encoding, told apart by the first byte (7E: HEX, SOH: ASCII)."""
    if raw[:1] == b"\x01":
        return decode_ascii(raw, offset_min)
    return decode_hex(raw, offset_min)


def _check_length(raw: bytes, declared: int, header: int, crc_len: int) -> None:
    """The declared body length against the bytes between the body start and the end char."""
    actual = len(raw) - header - 1 - crc_len
    if declared != actual:
        raise FrameError(f"declared length {declared:04d}, actual {max(actual, 0):04d}")


def decode_hex(raw: bytes, offset_min: int = CST_OFFSET_MIN) -> Frame | Rejection:
    """A HEX/BCD-mode frame -> Frame, or Rejection naming the first thing wrong."""
    try:
        return _decode_hex(bytes(raw), offset_min)
    except FrameError as exc:
        return _fail(bytes(raw), str(exc))


def _decode_hex(raw: bytes, offset_min: int) -> Frame:
    if raw[:2] != b"\x7e\x7e":
        raise FrameError(f"frame does not start with 7E7E: {raw[:2].hex().upper() or 'empty'}")
    if len(raw) < 17:
        raise FrameError(f"frame too short: {len(raw)} bytes, the smallest is 17")
    dirlen = raw[11] << 8 | raw[12]
    start = raw[13]
    if start == STX:
        nibble = dirlen >> 12
        if nibble not in (0x0, 0x8):
            raise FrameError(f"bad direction nibble {nibble:X} (0 up, 8 down)")
        direction, declared = ("down" if nibble else "up"), dirlen & 0x0FFF
    elif start == SYN:  # M3: all 16 bits are the length, and only stations send packets
        direction, declared = "up", dirlen
    else:
        raise FrameError(f"expected STX (02) or SYN (16) at byte 13, got {start:02X}")
    _check_length(raw, declared, 14, 2)
    end = raw[-3]
    if end not in END_CHARS:
        raise FrameError(f"bad end character {end:02X}")
    declared_crc, computed = raw[-2] << 8 | raw[-1], crc16(raw[:-2])
    if declared_crc != computed:
        raise FrameError(f"CRC declared {declared_crc:04X}, computed {computed:04X}")
    if direction == "up":
        centre, station = raw[2], raw[3:8].hex().upper()
    else:
        station, centre = raw[2:7].hex().upper(), raw[7]
    function = raw[10]
    payload = raw[14:-3]
    packet = None
    body = None
    fragment = b""
    if start == SYN:
        if len(payload) < 3:
            raise FrameError("packet too short for its total and sequence (3 bytes)")
        n = int.from_bytes(payload[:3], "big")
        total, seq = n >> 12, n & 0xFFF
        if not 1 <= seq <= total:
            raise FrameError(f"packet sequence {seq} outside 1..{total}")
        packet, fragment = (total, seq), payload[3:]
    else:
        body = decode_body(payload, direction, function, station, offset_min)
    return Frame("hex", direction, centre, station, raw[8:10].hex().upper(), function,
                 END_CHARS[end], declared_crc, packet, body, fragment, raw)  # fmt: skip


def decode_ascii(raw: bytes, offset_min: int = CST_OFFSET_MIN) -> Frame | Rejection:
    """An ASCII-mode frame -> Frame, or Rejection naming the first thing wrong."""
    try:
        return _decode_ascii(bytes(raw), offset_min)
    except FrameError as exc:
        return _fail(bytes(raw), str(exc))


def _hex_field(raw: bytes, start: int, n: int, what: str) -> int:
    text = raw[start : start + n]
    if len(text) != n or not all(c in b"0123456789ABCDEFabcdef" for c in text):
        raise FrameError(f"bad {what} {text!r}: expected {n} hex characters")
    return int(text, 16)


def _decode_ascii(raw: bytes, offset_min: int) -> Frame:
    if raw[:1] != b"\x01":
        raise FrameError("frame does not start with SOH (01)")
    if len(raw) < 29:
        raise FrameError(f"frame too short: {len(raw)} bytes, the smallest is 29")
    dirlen = _hex_field(raw, 19, 4, "direction and length")
    nibble = dirlen >> 12
    if nibble not in (0x0, 0x8):
        raise FrameError(f"bad direction nibble {nibble:X} (0 up, 8 down)")
    direction = "down" if nibble else "up"
    start = raw[23]
    if start == SYN:
        raise FrameError("multi-packet (SYN) frames are not supported in ASCII mode")
    if start != STX:
        raise FrameError(f"expected STX (02) at byte 23, got {start:02X}")
    _check_length(raw, dirlen & 0x0FFF, 24, 4)
    end = raw[-5]
    if end not in END_CHARS:
        raise FrameError(f"bad end character {end:02X}")
    declared_crc, computed = _hex_field(raw, len(raw) - 4, 4, "CRC"), crc16(raw[:-4])
    if declared_crc != computed:
        raise FrameError(f"CRC declared {declared_crc:04X}, computed {computed:04X}")
    if direction == "up":
        centre, station = _hex_field(raw, 1, 2, "centre"), raw[3:13]
    else:
        station, centre = raw[1:11], _hex_field(raw, 11, 2, "centre")
    if not station.isdigit():
        raise FrameError(f"bad station address {station!r}: expected 10 digits")
    password = _hex_field(raw, 13, 4, "password")
    function = _hex_field(raw, 17, 2, "function code")
    try:
        text = raw[24:-5].decode("ascii")
    except UnicodeDecodeError as exc:
        raise FrameError("body is not ASCII") from exc
    body = decode_ascii_body(text, direction, function, station.decode(), offset_min)
    return Frame("ascii", direction, centre, station.decode(), f"{password:04X}", function,
                 END_CHARS[end], declared_crc, None, body, b"", raw)  # fmt: skip

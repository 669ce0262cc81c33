"""The centre's replies to an SL 651 station, as pure functions of the frame and a time.

After an uplink report that asks for confirmation (M2/M3 link modes), the centre sends
a downlink frame: address reversed (station, then centre), the same password and
function, direction 8 with body length 8, STX, the report's serial, the centre's own
send time (6-byte BCD, local time) and an end character: ESC (done, the station stays
online), EOT (done, hang up) or ACK. A keep-alive (2F) gets no reply, nor a packet that
is not the last of its message (ETB). A station that writes ASCII mode is answered in
ASCII mode (``ack_frame`` picks by the report's encoding).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from connectors.sl651.frame import Frame, crc16

__all__ = ["ACK", "EOT", "ESC", "ack_frame", "ack_hex", "acks_hex", "bcd_time", "wants_ack"]

ESC, EOT, ACK = 0x1B, 0x04, 0x06


def wants_ack(frame: Frame) -> bool:
    """An uplink report other than a keep-alive, and the last packet of its message."""
    return frame.direction == "up" and frame.function != 0x2F and frame.end == "ETX"


def ack_frame(frame: Frame, serial: int, now_local: datetime, end: int = ESC) -> bytes:
    """Acknowledgement of ``frame`` in its encoding; ``serial`` is the report's (its body's)."""
    if frame.encoding == "ascii":
        return _ack_ascii(frame, serial, now_local, end)
    return ack_hex(frame.station, frame.centre, frame.password, frame.function, serial,
                   bcd_time(now_local), end)  # fmt: skip


def bcd_time(now_local: datetime) -> bytes:
    """A local time as the 6 BCD bytes YYMMDDHHMMSS of a send time."""
    return bytes.fromhex(now_local.strftime("%y%m%d%H%M%S"))


def ack_hex(
    station: str, centre: int, password: str, function: int, serial: int, now_bcd: bytes,
    end: int = ESC,
) -> bytes:  # fmt: skip
    """A HEX-mode acknowledgement from the report's header fields (``station``: 10 hex
    digits, ``password``: 4) and the centre's send time ``now_bcd`` (:func:`bcd_time`)."""
    body = serial.to_bytes(2, "big") + now_bcd
    address = bytes.fromhex(station) + bytes([centre])  # downlink: station first
    dirlen = (0x8000 | len(body)).to_bytes(2, "big")
    head = b"\x7e\x7e" + address + bytes.fromhex(password) + bytes([function])
    out = head + dirlen + b"\x02" + body + bytes([end])
    return out + crc16(out).to_bytes(2, "big")


def acks_hex(acks: Iterable[tuple[str, int, str, int, Iterable[int]]], now_bcd: bytes) -> bytes:
    """``ack_hex`` 's frames (ESC) for each serial of each (station, centre, password,
    function, serials), joined: a run's header is built once."""
    out = []
    tail = now_bcd + bytes([ESC])
    dirlen = (0x8000 | 2 + len(now_bcd)).to_bytes(2, "big")
    for station, centre, password, function, serials in acks:
        address = bytes.fromhex(station) + bytes([centre])  # downlink: station first
        head = b"\x7e\x7e" + address + bytes.fromhex(password) + bytes([function]) + dirlen
        head += b"\x02"
        for serial in serials:
            frame = head + serial.to_bytes(2, "big") + tail
            out.append(frame + crc16(frame).to_bytes(2, "big"))
    return b"".join(out)


def _ack_ascii(frame: Frame, serial: int, now_local: datetime, end: int) -> bytes:
    """ASCII mode: the same fields as characters (FACTS.md §1.1): SOH, station, centre
    (2 hex), password, function (2 hex), direction 8 + length in characters (3 hex),
    STX, serial (4 hex) and send time (12 digits), the end char, CRC as 4 hex digits."""
    body = f"{serial:04X}{now_local.strftime('%y%m%d%H%M%S')}"
    head = f"{frame.station}{frame.centre:02X}{frame.password}{frame.function:02X}"
    out = b"\x01" + f"{head}{0x8000 | len(body):04X}".encode() + b"\x02" + body.encode()
    out += bytes([end])
    return out + f"{crc16(out):04X}".encode()

"""HJ 212-2017 packets: bytes -> :class:`Packet` or :class:`Rejection` (FACTS.md §2.1).

``##`` + 4-digit length of the data segment + data segment + CRC (4 hex digits, either
case, over the data segment only) + CRLF. The data segment is
``QN=..;ST=..;CN=..;PW=..;MN=..;Flag=..;[PNUM=..;PNO=..;]CP=&&...&&``; HJ/T 212-2005
stations send it without QN and Flag. CP holds ``;``-separated groups of ``,``-separated
``key=value`` fields: ``DataTime`` and ``<code>-Rtd/-Avg/-Min/-Max/-Cou/-Flag``.

Each packet of a multi-packet message (PNUM/PNO) carries whole CP fields, so each one is
decoded on its own: there is nothing to reassemble.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from connectors.decoded import CST_OFFSET_MIN, FrameError, Reading, Rejection, local_ms
from connectors.hj212.codes import DATA_COMMANDS, FIELD_SUFFIX, FLAG_QUALITY, POLLUTANTS
from engine.contracts.batch import Quality

__all__ = ["Packet", "crc", "decode", "encode"]

MAX_SEGMENT = 9999  # what four digits can declare


def _table() -> list[int]:
    out = []
    for byte in range(256):
        reg = byte
        for _ in range(8):
            reg = (reg >> 1) ^ 0xA001 if reg & 1 else reg >> 1
        out.append(reg)
    return out


_CRC_TABLE = _table()


def crc(segment: bytes) -> int:
    """HJ 212's CRC (FACTS.md §2.1): per byte, reg = (reg >> 8) ^ byte, then 8 reflected
    0xA001 shifts. Only the high byte of reg survives a step, so a step is one lookup."""
    reg = 0xFFFF
    table = _CRC_TABLE
    for byte in segment:
        reg = table[(reg >> 8) ^ byte]
    return reg


def encode(segment: str) -> bytes:
    """A data segment -> the whole packet with length, CRC (upper case) and CRLF."""
    data = segment.encode()
    return b"##%04d%s%04X\r\n" % (len(data), data, crc(data))


@dataclass(frozen=True, slots=True)
class Packet:
    header: dict[str, str]  # QN, ST, CN, PW, MN, Flag, PNUM, PNO as sent
    cp: dict[str, str]  # the CP fields in order
    crc: int
    data_time_ms: int | None  # CP DataTime, ms UTC
    readings: list[Reading]
    raw: bytes = field(repr=False)

    @property
    def cn(self) -> str:
        return self.header["CN"]

    @property
    def mn(self) -> str:
        return self.header["MN"]

    @property
    def flag(self) -> int | None:
        flag = self.header.get("Flag")
        return int(flag) if flag is not None and flag.isdigit() else None


def decode(raw: bytes, offset_min: int = CST_OFFSET_MIN) -> Packet | Rejection:
    """One packet (with or without the trailing CRLF) -> Packet, or Rejection naming the
    first thing wrong: framing, then length, then CRC, then content."""
    raw = bytes(raw)
    try:
        return _decode(raw, offset_min)
    except FrameError as exc:
        return Rejection(str(exc), raw)


def _decode(raw: bytes, offset_min: int) -> Packet:
    frame = raw[:-2] if raw.endswith(b"\r\n") else raw
    if frame[:2] != b"##":
        raise FrameError(f"packet does not start with ##: {frame[:2]!r}")
    length = frame[2:6]
    if len(length) != 4 or not length.isdigit():
        raise FrameError(f"bad length field {length.decode('latin-1')!r}: expected 4 digits")
    declared, actual = int(length), len(frame) - 10
    if declared != actual:
        raise FrameError(f"declared length {declared:04d}, actual {max(actual, 0):04d}")
    data, crc_text = frame[6:-4], frame[-4:]
    if not all(c in b"0123456789ABCDEFabcdef" for c in crc_text):
        raise FrameError(f"bad CRC field {crc_text.decode('latin-1')!r}: expected 4 hex digits")
    declared_crc, computed = int(crc_text, 16), crc(data)
    if declared_crc != computed:
        raise FrameError(f"CRC declared {declared_crc:04X}, computed {computed:04X}")
    try:
        segment = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise FrameError(f"data segment is not ASCII at byte {exc.start}") from None
    start = segment.find("CP=&&")
    if start < 0:
        raise FrameError("no CP=&&...&& in the data segment")
    if not segment.endswith("&&") or len(segment) < start + 7:
        raise FrameError("CP does not end with &&")
    header = _pairs(segment[:start].split(";"), "header")
    for key in ("CN", "MN"):
        if key not in header:
            raise FrameError(f"no {key} in the header")
    cp = _pairs(segment[start + 5 : -2].replace(",", ";").split(";"), "CP")
    data_time = cp.get("DataTime")
    ms = _data_time(data_time, offset_min) if data_time is not None else None
    readings = _readings(header, cp, ms)
    return Packet(header, cp, declared_crc, ms, readings, raw)


def _pairs(items: list[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise FrameError(f"bad {where} field {item[:40]!r}: expected key=value")
        out[key] = value
    return out


def _data_time(text: str, offset_min: int) -> int:
    """``YYYYMMDDhhmmss`` (some stations add ``zzz`` milliseconds)."""
    if len(text) not in (14, 17) or not text.isdigit():
        raise FrameError(f"bad DataTime {text[:20]!r}: expected YYYYMMDDhhmmss")
    ms = local_ms(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]),
                  int(text[10:12]), int(text[12:14]), offset_min, "DataTime")  # fmt: skip
    return ms + (int(text[14:17]) if len(text) == 17 else 0)


def _readings(header: dict[str, str], cp: dict[str, str], ms: int | None) -> list[Reading]:
    period = DATA_COMMANDS.get(header["CN"])
    if period is None:
        return []
    if ms is None:
        raise FrameError(f"no DataTime in the CP of a CN={header['CN']} data packet")
    station = header["MN"]
    out = []
    for key, text in cp.items():
        code, dash, suffix = key.rpartition("-")
        if not dash or suffix not in FIELD_SUFFIX or code not in POLLUTANTS:
            continue
        try:
            value = float(text)
        except ValueError:
            raise FrameError(f"bad value {text[:20]!r} for {key}") from None
        if value != value or abs(value) == float("inf"):
            raise FrameError(f"bad value {text[:20]!r} for {key}")
        flag = cp.get(f"{code}-Flag")
        quality = Quality.UNCHECKED if flag is None else FLAG_QUALITY.get(flag, Quality.SUSPECT)
        metric = POLLUTANTS[code][0] + period + FIELD_SUFFIX[suffix]
        out.append(Reading(station, metric, ms, value, quality))
    return out

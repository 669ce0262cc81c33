"""An SL 651 reservoir RTU: every 5 minutes a timed report (32) with the 5-minute rain
increment (PN05), the head-water level (ZU) and the battery voltage, over TCP in HEX
mode, with faults on request (``simulators.tcp_station.Fault``)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from connectors.sl651.frame import crc16
from simulators.tcp_station import Fault, damage

__all__ = ["Sl651Rtu"]


def _bcd(value: float, decimals: int, size: int) -> bytes:
    """A non-negative value as ``size`` BCD bytes with the decimal point removed."""
    return bytes.fromhex(f"{round(value * 10**decimals):0{2 * size}d}")


class Sl651Rtu:
    def __init__(self, station: str = "0012345678", centre: int = 1, password: str = "1234",
                 faults: frozenset[Fault] = frozenset()) -> None:  # fmt: skip
        self.station, self.centre, self.password, self.faults = station, centre, password, faults
        self.serial = 0

    def values(self, t: datetime) -> tuple[float, float, float]:
        """(rain mm in the last 5 min, reservoir level m, voltage V) at local time ``t``."""
        hours = t.timestamp() / 3600
        return round(max(0.0, 2 * math.sin(hours)), 1), round(100 + math.sin(hours / 6), 3), 12.6

    def report(self, t: datetime) -> list[bytes]:
        """The frames one timed report puts on the wire at the station's clock ``t``."""
        self.serial = self.serial % 65535 + 1
        if Fault.CLOCK_SKEW in self.faults:
            t += timedelta(hours=1)
        rain, level, volt = self.values(t)
        body = (self.serial.to_bytes(2, "big") + bytes.fromhex(t.strftime("%y%m%d%H%M%S"))
                + b"\xf1\xf1" + bytes.fromhex(self.station) + b"\x4b"
                + b"\xf0\xf0" + bytes.fromhex(t.strftime("%y%m%d%H%M"))
                + b"\x22\x19" + _bcd(rain, 1, 3) + b"\x3b\x23" + _bcd(level, 3, 4)
                + b"\x38\x12" + _bcd(volt, 2, 2))  # fmt: skip
        password = "FFFF" if Fault.WRONG_PASSWORD in self.faults else self.password
        address = bytes([self.centre]) + bytes.fromhex(self.station)  # uplink: centre first
        head = b"\x7e\x7e" + address + bytes.fromhex(password) + b"\x32"
        frame = head + len(body).to_bytes(2, "big") + b"\x02" + body + b"\x03"
        frame += crc16(frame).to_bytes(2, "big")
        return damage(frame, self.faults, lambda f: f[:-1] + bytes([f[-1] ^ 0x01]))

"""An HJ 212 air-quality station (ST 22): real-time data (2011) every report and hourly
data (2061) on the hour, over TCP, asking for a data response (Flag 5), with faults on
request (``simulators.tcp_station.Fault``)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from connectors.hj212.frame import encode
from simulators.tcp_station import Fault, damage

__all__ = ["Hj212Station"]


def _bad_crc(packet: bytes) -> bytes:
    c = packet[-3:-2]
    return packet[:-3] + (b"0" if c != b"0" else b"1") + packet[-2:]


class Hj212Station:
    def __init__(self, mn: str = "AQ0000000001", pw: str = "123456",
                 faults: frozenset[Fault] = frozenset()) -> None:  # fmt: skip
        self.mn, self.pw, self.faults = mn, pw, faults

    def values(self, t: datetime) -> dict[str, float]:
        """Pollutant concentrations (µg/m³; CO mg/m³) at local time ``t``."""
        h = t.timestamp() / 3600
        wave = math.sin(h / 4)
        return {"a34004": round(60 + 30 * wave, 1), "a34002": round(90 + 40 * wave, 1),
                "a21026": 8.0, "a21004": 35.0, "a21005": 0.8,
                "a05024": round(80 + 40 * math.sin(h / 3), 1)}  # fmt: skip

    def _packet(self, cn: str, suffix: str, t: datetime, data_time: datetime) -> bytes:
        cp = ";".join(f"{code}-{suffix}={v},{code}-Flag=N" for code, v in self.values(t).items())
        pw = "000000" if Fault.WRONG_PASSWORD in self.faults else self.pw
        # QN names the request: the hourly packet sent with a real-time one needs its own.
        qn = t.strftime("%Y%m%d%H%M%S") + ("001" if cn == "2061" else "000")
        seg = (f"QN={qn};ST=22;CN={cn};PW={pw};MN={self.mn};Flag=5;"
               f"CP=&&DataTime={data_time.strftime('%Y%m%d%H%M%S')};{cp}&&")  # fmt: skip
        return encode(seg)

    def report(self, t: datetime) -> list[bytes]:
        """Real-time data at ``t``; on the hour also the hourly data of the hour before."""
        if Fault.CLOCK_SKEW in self.faults:
            t += timedelta(hours=1)
        out = damage(self._packet("2011", "Rtd", t, t), self.faults, _bad_crc)
        if t.minute == 0:
            hour = t - timedelta(hours=1)
            out += damage(self._packet("2061", "Avg", t, hour), self.faults, _bad_crc)
        return out

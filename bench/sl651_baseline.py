"""A straightforward pure-Python SL 651 HEX decoder: the baseline of
``bench/field_decode.py``. What a first implementation looks like: the frame as a hex
string, a bitwise CRC-16/MODBUS, ``datetime`` per time field, one element at a time.
It reads the elements of a typical hourly report (F1F1, F0F0, the F4..FC 5-minute
series and BCD elements) and nothing else; it is not used by Vigil."""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["decode_baseline"]

METRICS = {"F4": ("rainfall", 1, 0.1, "FF"), "F5": ("water_level_relative", 2, 0.01, "FFFF")}
ELEMENT_METRICS = {"26": "rainfall_total", "39": "water_level", "38": "voltage",
                   "3B": "reservoir_level", "22": "rainfall", "20": "rainfall_today"}  # fmt: skip


def crc16_modbus(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def _time(digits: str) -> int:
    t = datetime.strptime(digits[:10], "%y%m%d%H%M") - timedelta(hours=8)
    return int((t - datetime(1970, 1, 1)).total_seconds() * 1000)


def decode_baseline(raw: bytes) -> list[tuple[str, str, int, float]]:
    """Readings (station address, metric, ts_ms, value) of an uplink HEX report."""
    h = raw.hex().upper()
    if not h.startswith("7E7E"):
        raise ValueError("no 7E7E")
    if int(h[-4:], 16) != crc16_modbus(raw[:-2]):
        raise ValueError("CRC")
    station = h[6:16]
    length = int(h[22:26], 16) & 0x0FFF
    body = h[28 : 28 + 2 * length]
    pos = 16  # serial (4) and send time (12)
    obs = None
    out = []
    while pos < len(body):
        lead = body[pos : pos + 2]
        if lead == "F1":
            pos += 16
        elif lead == "F0":
            obs = _time(body[pos + 4 : pos + 14])
            pos += 14
        elif lead in METRICS or lead in ("F6", "F7", "F8", "F9", "FA", "FB", "FC"):
            metric, width, scale, invalid = METRICS.get(lead, METRICS["F5"])
            size = (int(body[pos + 2 : pos + 4], 16) >> 3) * 2
            data = body[pos + 4 : pos + 4 + size]
            for i in range(0, size, 2 * width):
                v = data[i : i + 2 * width]
                if v != invalid and obs is not None:
                    out.append((station, metric, obs + (i // (2 * width)) * 300_000,
                                round(int(v, 16) * scale, 3)))  # fmt: skip
            pos += 4 + size
        else:
            definition = int(body[pos + 2 : pos + 4], 16)
            size, decimals = (definition >> 3) * 2, definition & 7
            data = body[pos + 4 : pos + 4 + size]
            if lead in ELEMENT_METRICS and obs is not None and data != "F" * size:
                out.append((station, ELEMENT_METRICS[lead], obs, int(data) / 10**decimals))
            pos += 4 + size
    return out

"""``vigil decode``: one frame as text in, one JSON-ready dict out (for operators).

SL 651 frames are given in hex (either encoding; spaces allowed), HJ 212 packets as
their text. Times are shown both as epoch ms (UTC) and as ISO 8601 in the stations'
clock (UTC+8), the way a station's log shows them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from connectors import hj212, sl651
from connectors.decoded import CST_OFFSET_MIN, Reading, Rejection
from connectors.sl651.frame import FUNCTIONS

__all__ = ["Sl651Lines", "hj212_json"]

_TZ = timezone(timedelta(minutes=CST_OFFSET_MIN))


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(_TZ).isoformat()


def _readings(readings: list[Reading]) -> list[dict[str, Any]]:
    return [{"station": r.station, "metric": r.metric, "ts": r.ts_ms, "time": _iso(r.ts_ms),
             "value": r.value, "quality": int(r.quality)} for r in readings]  # fmt: skip


def _rejected(protocol: str, rejection: Rejection, raw: str) -> dict[str, Any]:
    return {"protocol": protocol, "ok": False, "reason": rejection.reason, "raw": raw}


class Sl651Lines:
    """Decodes SL 651 frames one by one; packets of a multi-packet message are also
    joined, and the whole message is reported after its last packet."""

    def __init__(self) -> None:
        self._reassembler = sl651.Reassembler()

    def decode(self, line: str) -> list[dict[str, Any]]:
        text = "".join(line.split())
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            return [_rejected("sl651", Rejection("not hex", b""), text)]
        frame = sl651.decode(raw)
        if isinstance(frame, Rejection):
            return [_rejected("sl651", frame, raw.hex().upper())]
        out = [self._frame(frame)]
        if frame.packet is not None:
            whole = self._reassembler.feed(frame)
            if isinstance(whole, Rejection):
                out.append(_rejected("sl651", whole, whole.raw.hex().upper()))
            elif whole is not None:
                out.append(self._frame(whole))
        return out

    @staticmethod
    def _frame(f: sl651.Frame) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "protocol": "sl651", "ok": True, "encoding": f.encoding, "direction": f.direction,
            "centre": f.centre, "station": f.station, "password": f.password,
            "function": f"{f.function:02X}", "function_name": FUNCTIONS.get(f.function),
            "end": f.end, "crc": f"{f.crc:04X}",
        }  # fmt: skip
        if f.packet is not None:
            doc["packet"] = {"total": f.packet[0], "seq": f.packet[1]}
            doc["fragment_bytes"] = len(f.fragment)
            return doc
        b = f.body
        assert b is not None  # a frame that is not a packet has its body
        doc.update(serial=b.serial, send_time=_iso(b.send_ms), body_station=b.station,
                   station_type=b.station_type)  # fmt: skip
        doc["groups"] = [
            {"obs_time": _iso(g.obs_ms), "step_min": g.step_ms // 60_000,
             "values": [v._asdict() for v in g.values]}
            for g in b.groups
        ]  # fmt: skip
        if b.picture:
            doc["picture_bytes"] = len(b.picture)
        if b.rest:
            doc["undecoded"] = b.rest.hex().upper()
        doc["readings"] = _readings(f.readings)
        return doc


def hj212_json(line: str) -> dict[str, Any]:
    raw = line.rstrip("\r\n").encode("utf-8", "surrogateescape")
    packet = hj212.decode(raw)
    if isinstance(packet, Rejection):
        return _rejected("hj212", packet, raw.decode("utf-8", "replace"))
    return {
        "protocol": "hj212", "ok": True, "header": packet.header, "crc": f"{packet.crc:04X}",
        "data_time": _iso(packet.data_time_ms), "cp": packet.cp,
        "wants_reply": hj212.wants_reply(packet), "readings": _readings(packet.readings),
    }  # fmt: skip

"""SL 651 decoding against the captured field frames (shared/data/sl651) and the test
vectors of FACTS.md §1.5. Expected values come from the data file's own fields and from
FACTS.md, never from the decoder."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.decoded import Rejection
from connectors.sl651 import Frame, Reassembler, ack_frame, decode, wants_ack
from connectors.sl651.frame import crc16
from engine.contracts.batch import Quality

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sl651"
FRAMES = json.loads((DATA / "sl651_frames.json").read_text())
CST = 8 * 3600_000


def local(text: str) -> int:
    """'YYYYMMDDhhmm[ss]' in UTC+8 -> epoch ms."""
    fmt = "%Y%m%d%H%M%S" if len(text) == 14 else "%Y%m%d%H%M"
    return int(datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp() * 1000) - CST


def ok(raw: bytes) -> Frame:
    frame = decode(raw)
    assert isinstance(frame, Frame), frame
    return frame


@pytest.mark.parametrize("row", FRAMES, ids=[f"{i}-{r['func']}" for i, r in enumerate(FRAMES)])
def test_every_captured_frame_decodes_or_is_rejected_as_its_file_says(row: dict) -> None:
    raw = bytes.fromhex(row["hex"])
    result = decode(raw)
    if not row["crc_ok"]:
        assert isinstance(result, Rejection)
        assert result.reason == f"CRC declared {row['crc_declared']}, computed {row['crc_calc']}"
        assert result.raw == raw
        return
    assert isinstance(result, Frame), result
    assert result.direction == row["direction"]
    assert result.centre == row["center"]
    assert result.station == row["station"]
    assert result.password == row["password"]
    assert f"{result.function:02X}" == row["func"]
    assert f"{result.crc:04X}" == row["crc_declared"]
    if "packets_total" in row:  # a packet's body is a fragment: nothing else to read
        assert result.packet == (row["packets_total"], row["packet_seq"])
        assert result.body is None
        return
    body = result.body
    assert body is not None
    assert body.serial == row["serial"]
    assert body.send_ms == local(row["send_time"])
    if "elements_my_parse" not in row:  # the file does not say what the body holds
        return
    expected = row["elements_my_parse"]
    stations = [e for e in expected if e["id"] == "F1F1"]
    if stations:
        assert body.station == stations[0]["station"]
        assert body.station_type == chr(int(stations[0]["station_type"], 16))
    times = [local(e["obs_time"]) for e in expected if e["id"] == "F0F0"]
    assert [g.obs_ms for g in body.groups if g.obs_ms is not None] == times
    values = [e for e in expected if e["id"] not in ("F1F1", "F0F0")]
    ours = [v for g in body.groups for v in g.values]
    assert [v.element for v in ours] == [e["id"] for e in values]
    for v, e in zip(ours, values, strict=True):
        assert v.raw == e["raw"]
        if "value" in e:
            assert v.value == pytest.approx(e["value"])


def test_source_decoded_timed_report() -> None:
    """Frame 28: the source's own comment decodes it (PJ 13, PN05 4, Z 0.55, VT 12.68)."""
    row = FRAMES[28]
    src = row["also_in"][1]["source_decoded"]
    frame = ok(bytes.fromhex(row["hex"]))
    got = {r.metric: r.value for r in frame.readings}
    assert got == {"rainfall_today": src["PJ_current_rain_mm"],
                   "rainfall": src["PN05_5min_rain_mm"], "water_level": src["Z_water_level_m"],
                   "voltage": src["VT_voltage_V"]}  # fmt: skip
    assert {r.ts_ms for r in frame.readings} == {local("202007241723")}
    assert {r.station for r in frame.readings} == {src["station"]}


V = {
    "V1": "7e7e011090330853a0002f000802009f26020209410003bde3",
    "V2": "7e7e011090330853a00032004d02009e260202094021f1f1109033085350f0f026020209402219000000"
    "272b0000000000392300000138371b000000302b00000430002019000000"
    "1f1900000026190000001a1900000038121197035f3c",
    "V3": "7e7e109033085301a00032800802009e2602020940241b8c37",
    "V4": "7e7e011090330853a000340079020094260202090031f1f1109033085350f0f02602020805f460ff"
    "ffffffffffffffffffff00f0f02602020805f5c0ffffffffffffffffffffffffffffffffffffffffffff"
    "0011f0f0260202090020190000001a190000002619000000272b0000000000392300000168371b0000"
    "00302b00000430003812115503ff1f",
    "V5": "7E7E05001122334403E832002B020034170718110016F1F1001122334448F0F01707181100201900"
    "004026190000403923000104903812109903A421",
    "V6": "7E7E00987654321012342F0008027E0822101110074703C3AE",
    "V7": "7E7E0101000000011234300033020040201126142746F1F1010000000148F0F020112614272019000000"
    "2619000000392300000075381212087A0829FFA011028803E43B",
    "V8": "013031353031303132333435363030303033323030334502303030313236303930393038303030305354"
    "203530313031323334353620482054542032363039303930383030205A20362E33382056542031322E35"
    "30200336454241",
}


def frame(name: str) -> Frame:
    return ok(bytes.fromhex(V[name]))


def test_v1_keep_alive() -> None:
    f = frame("V1")
    assert (f.direction, f.centre, f.station, f.password, f.function) == (
        "up", 1, "1090330853", "A000", 0x2F)  # fmt: skip
    assert f.body is not None and f.body.serial == 159
    assert f.body.send_ms == local("20260202094100")
    assert (f.end, f.crc) == ("ETX", 0xBDE3)
    assert f.readings == []


def test_v2_timed_report_values() -> None:
    f = frame("V2")
    assert f.body is not None and f.body.station_type == "P"
    got = {r.metric: r.value for r in f.readings}
    assert got["water_level"] == 0.138
    assert got["voltage"] == 11.97
    assert got["outflow"] == 43.0
    assert got["rainfall"] == 0.0 and got["discharge"] == 0.0 and got["velocity"] == 0.0
    assert {r.ts_ms for r in f.readings} == {local("202602020940")}
    assert {r.quality for r in f.readings} == {Quality.UNCHECKED}


def test_v3_downlink_ack_and_our_ack_for_v2_is_byte_identical() -> None:
    down = frame("V3")
    assert (down.direction, down.station, down.centre, down.end) == (
        "down", "1090330853", 1, "ESC")  # fmt: skip
    v2 = frame("V2")
    assert wants_ack(v2) and not wants_ack(frame("V1"))
    assert v2.body is not None
    ack = ack_frame(v2, v2.body.serial, datetime(2026, 2, 2, 9, 40, 24))
    assert ack == bytes.fromhex(V["V3"])


def test_ack_with_ack_end_char_matches_captured_downlink() -> None:
    """Frame 32 is the downlink ACK (end 06) the source sent for frame 28."""
    report = ok(bytes.fromhex(FRAMES[28]["hex"]))
    assert report.body is not None
    ack = ack_frame(report, report.body.serial, datetime(2020, 7, 24, 17, 23, 49), end=0x06)
    assert ack == bytes.fromhex(FRAMES[32]["hex"])


def test_v4_hourly_series() -> None:
    f = frame("V4")
    rain = [r for r in f.readings if r.metric == "rainfall"]
    level = [r for r in f.readings if r.metric == "water_level_relative"]
    # 11 invalid 5-minute values then one: the 12th, 55 min after the 08:05 group time
    assert [(r.ts_ms, r.value) for r in rain] == [(local("202602020900"), 0.0)]
    assert [(r.ts_ms, r.value) for r in level] == [(local("202602020900"), 0.17)]
    got = {r.metric: r.value for r in f.readings if r.ts_ms == local("202602020900")}
    assert got["water_level"] == 0.168 and got["voltage"] == 11.55


def test_v5_v6_v7() -> None:
    v5 = frame("V5")
    assert (v5.centre, v5.station, v5.password) == (5, "0011223344", "03E8")
    got = {r.metric: r.value for r in v5.readings}
    assert got == {"rainfall_today": 4.0, "rainfall_total": 4.0, "water_level": 10.49,
                   "voltage": 10.99}  # fmt: skip
    v6 = frame("V6")  # serial 0x7E08 contains 7E
    assert v6.body is not None and v6.body.serial == 0x7E08 and v6.crc == 0xC3AE
    v7 = frame("V7")
    assert v7.body is not None
    vendor = {v.element: v.value for g in v7.body.groups for v in g.values if v.code is None}
    assert vendor == {"7A": 29.0, "FFA0": 28.8}
    assert {r.quality for r in v7.readings} == {Quality.SUSPECT}  # a test report


def test_v8_ascii_mode() -> None:
    f = frame("V8")
    assert (f.encoding, f.centre, f.station, f.password, f.function) == (
        "ascii", 1, "5010123456", "0000", 0x32)  # fmt: skip
    assert f.crc == 0x6EBA
    got = {(r.metric, r.ts_ms): r.value for r in f.readings}
    assert got == {("water_level", local("202609090800")): 6.38,
                   ("voltage", local("202609090800")): 12.5}  # fmt: skip


def with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "big")


def test_rejections_name_what_is_wrong() -> None:
    v5 = bytes.fromhex(V["V5"])
    bad_crc = v5[:-2] + b"\x11\x00"
    assert decode(bad_crc).reason == "CRC declared 1100, computed A421"  # type: ignore[union-attr]
    short = with_crc(v5[:-5] + b"\x03")
    assert decode(short).reason == "declared length 0043, actual 0041"  # type: ignore[union-attr]
    i = v5.index(bytes.fromhex("39230001"))  # Z: make a BCD digit 'A'
    bcd = with_crc(v5[:i] + bytes.fromhex("3923000A") + v5[i + 4 : -2])
    assert decode(bcd).reason == "bad BCD digit in element 0x39"  # type: ignore[union-attr]
    unknown = with_crc(v5[:i] + bytes.fromhex("FD230001") + v5[i + 4 : -2])
    assert decode(unknown).reason == "unknown element 0xFD"  # type: ignore[union-attr]
    assert decode(b"").reason == "frame does not start with 7E7E: empty"  # type: ignore[union-attr]


def packet(total: int, seq: int, fragment: bytes, last: bool) -> bytes:
    head = bytes.fromhex("7E7E011090330853A00032")
    length = 3 + len(fragment)
    pkt = ((total << 12) | seq).to_bytes(3, "big")
    end = b"\x03" if last else b"\x17"
    return with_crc(head + length.to_bytes(2, "big") + b"\x16" + pkt + fragment + end)


def test_reassembly_out_of_order_gives_the_whole_message() -> None:
    v2 = bytes.fromhex(V["V2"])
    body = v2[14:-3]
    parts = [body[:20], body[20:50], body[50:]]
    r = Reassembler()
    frames = [ok(packet(3, s, parts[s - 1], s == 3)) for s in (2, 3, 1)]
    assert r.feed(frames[0]) is None and r.feed(frames[1]) is None and len(r) == 1
    whole = r.feed(frames[2])
    assert isinstance(whole, Frame)
    assert len(r) == 0
    assert whole.readings == frame("V2").readings


def test_reassembly_memory_is_bounded() -> None:
    r = Reassembler(max_messages=4, max_bytes=100)
    for row in FRAMES[18:27]:  # the captured picture: packets 1, 4, 5, 10 never came
        pkt = ok(bytes.fromhex(row["hex"]))
        result = r.feed(pkt)
        assert isinstance(result, Rejection)  # each fragment alone is over 100 bytes
        assert result.reason.startswith("multi-packet message over 100 bytes")
    r = Reassembler(max_messages=4)
    for row in FRAMES[18:27]:
        assert r.feed(ok(bytes.fromhex(row["hex"]))) is None
    assert len(r) == 1
    for total in range(2, 20):  # many messages that never complete
        assert r.feed(ok(packet(total, 1, b"x" * 10, False))) is None
    assert len(r) == 4

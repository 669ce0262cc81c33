"""Whatever the bytes, the SL 651 and HJ 212 decoders return a frame or a Rejection:
nothing else escapes, and nothing hangs (hypothesis' deadline). Mutated real frames get
their CRC (and HJ 212 length) fixed up, so the body parsers see the damage too."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import hj212, sl651
from connectors.decoded import Rejection
from connectors.sl651.frame import crc16

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SL651 = [
    bytes.fromhex(r["hex"]) for r in json.loads((DATA / "sl651/sl651_frames.json").read_text())
]
HJ212 = [
    json.loads(line)["frame"].encode()
    for line in (DATA / "hj212/hj212_frames.jsonl").read_text().splitlines()
]
FAST = settings(max_examples=400, deadline=500, suppress_health_check=[HealthCheck.too_slow])


def mutate(data: st.DataObject, raw: bytes) -> bytes:
    b = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        i = data.draw(st.integers(0, max(len(b) - 1, 0)))
        if kind == "flip" and b:
            b[i] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del b[i:]
        elif kind == "insert":
            b[i:i] = data.draw(st.binary(max_size=8))
        elif b:
            del b[i]
    return bytes(b)


def check_sl651(raw: bytes) -> None:
    result = sl651.decode(raw)
    assert isinstance(result, sl651.Frame | Rejection)
    if isinstance(result, Rejection):
        assert result.reason and result.raw == raw
    elif result.packet is not None:
        r = sl651.Reassembler(max_messages=2, max_bytes=4096)
        assert isinstance(r.feed(result), sl651.Frame | Rejection | None)


@FAST
@given(st.binary(max_size=300))
def test_sl651_random_bytes(raw: bytes) -> None:
    check_sl651(raw)
    check_sl651(b"\x7e\x7e" + raw)
    check_sl651(b"\x01" + raw)


@FAST
@given(st.data(), st.sampled_from(SL651))
def test_sl651_mutated_frames_with_fixed_crc(data: st.DataObject, raw: bytes) -> None:
    body = mutate(data, raw[:-2])
    check_sl651(body + raw[-2:])
    if len(body) >= 14:  # make the declared length and the CRC right again
        n = len(body) - 15
        body = body[:11] + (n & 0xFFFF).to_bytes(2, "big") + body[13:]
        check_sl651(body + crc16(body).to_bytes(2, "big"))


def check_hj212(raw: bytes) -> None:
    result = hj212.decode(raw)
    assert isinstance(result, hj212.Packet | Rejection)
    if isinstance(result, Rejection):
        assert result.reason and result.raw == raw


@FAST
@given(st.binary(max_size=300))
def test_hj212_random_bytes(raw: bytes) -> None:
    check_hj212(raw)
    check_hj212(b"##" + raw)


@FAST
@given(st.data(), st.sampled_from(HJ212))
def test_hj212_mutated_packets_with_fixed_length_and_crc(data: st.DataObject, raw: bytes) -> None:
    segment = mutate(data, raw[6:-4])
    check_hj212(raw[:6] + segment + raw[-4:])
    packet = b"##%04d%s%04X\r\n" % (len(segment), segment, hj212.crc(segment))
    check_hj212(packet)

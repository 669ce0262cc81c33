"""The field server's per-read fast paths give what the general paths give:
``Sl651Session.handle_many`` what ``handle`` frame by frame gives (readings, dead
letters, replies byte for byte and in order, serials, the connection's station),
``acks_hex`` what ``ack_hex`` gives per report, and the ``Splitter`` the same frames and
garbage however the bytes are cut into reads."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.decoded import blocks
from connectors.fieldsession import FieldMessage, Identity, Peer
from connectors.framing import Splitter
from connectors.hj212.server import Hj212Framing
from connectors.sl651 import server as sl651_server
from connectors.sl651.frame import crc16
from connectors.sl651.reply import ack_hex, acks_hex, bcd_time
from connectors.sl651.server import Sl651Framing, Sl651Session

IDS = {
    "0012345678": Identity("SK01", "1234"),
    "0087654321": Identity("SK02", "ABCD"),
    "1090330853": Identity("SK09", "A000"),
}
KEEP_ALIVE = bytes.fromhex("7e7e011090330853a0002f000802009f26020209410003bde3")  # FACTS V1
T0 = datetime(2026, 7, 1, 9, 50)


def _report(station: str, password: str, function: int, serial: int, minute: int,
            element: bytes = b"\x3b\x23", end: int = 0x03, centre: int = 1) -> bytes:  # fmt: skip
    """An uplink HEX report (rain, a level under ``element``, voltage)."""
    t = T0 + timedelta(minutes=5 * minute)
    body = (serial.to_bytes(2, "big") + bytes.fromhex(t.strftime("%y%m%d%H%M%S"))
            + b"\xf1\xf1" + bytes.fromhex(station) + b"\x4b"
            + b"\xf0\xf0" + bytes.fromhex(t.strftime("%y%m%d%H%M"))
            + b"\x22\x19" + bytes.fromhex(f"{minute % 100:06d}")
            + element + bytes.fromhex(f"{100_000 + minute:08d}")
            + b"\x38\x12" + bytes.fromhex("1260"))  # fmt: skip
    head = (
        b"\x7e\x7e"
        + bytes([centre])
        + bytes.fromhex(station)
        + bytes.fromhex(password)
        + bytes([function])
    )
    frame = head + len(body).to_bytes(2, "big") + b"\x02" + body + bytes([end])
    return frame + crc16(frame).to_bytes(2, "big")


def _frame(kind: str, k: int) -> bytes:
    serial = k + 1
    if kind == "a":  # SK01's timed report
        return _report("0012345678", "1234", 0x32, serial, k)
    if kind == "b":  # SK02's hourly report, lower-case password in the registry's upper
        return _report("0087654321", "ABCD", 0x34, serial, k)
    if kind == "x":  # SK01's report to another centre
        return _report("0012345678", "1234", 0x32, serial, k, centre=2)
    if kind == "t":  # a test report: SUSPECT readings
        return _report("0012345678", "1234", 0x30, serial, k)
    if kind == "w":  # wrong password
        return _report("0012345678", "FFFF", 0x32, serial, k)
    if kind == "u":  # unknown station
        return _report("0055555555", "1234", 0x32, serial, k)
    if kind == "m":  # a value of an element with no Vigil metric (AC, 0x01)
        return _report("0012345678", "1234", 0x32, serial, k, element=b"\x01\x23")
    if kind == "e":  # ETB: not the last packet of its message, single-packet (no reply)
        return _report("0012345678", "1234", 0x32, serial, k, end=0x17)
    if kind == "c":  # bad CRC
        good = _report("0012345678", "1234", 0x32, serial, k)
        return good[:-1] + bytes([good[-1] ^ 1])
    assert kind == "k"
    return KEEP_ALIVE


class _FixedNow(datetime):
    @classmethod
    def now(cls, tz: object = None) -> _FixedNow:
        return cls(2026, 7, 1, 1, 2, 3, tzinfo=UTC)


def _outcome(
    messages: list[FieldMessage], heard: list[tuple[str, int]], peer: Peer, unmapped: Counter
) -> dict[str, object]:
    readings = []
    for m in messages:
        for r in [*m.readings, *blocks(m.columns)]:
            if isinstance(r, tuple):
                readings.append(tuple(r))
            else:  # a ReadingBlock: station, metric, its times and values (UNCHECKED)
                readings += [
                    (r.station, r.metric, t, v, 0) for t, v in zip(r.ts, r.value, strict=True)
                ]
    return {
        "readings": sorted(readings),
        "dead": [(m.payload, m.reason, m.source) for m in messages if m.reason is not None],
        "replies": b"".join(m.reply() for m in messages if m.reply is not None),
        "serials": {d: [s for e, s in heard if e == d] for d, _ in heard},  # per device
        "station": (peer.station, peer.identity),
        "unmapped": dict(unmapped),
    }


def _session(heard: list[tuple[str, int]], unmapped: Counter) -> Sl651Session:
    def on_sequence(device: str, serials: list[int], _ms: int) -> None:
        heard.extend((device, s) for s in serials)

    return Sl651Session(lambda: IDS, unmapped, on_sequence=on_sequence)


@settings(max_examples=150, deadline=None)
@given(reads=st.lists(st.lists(st.sampled_from("abxtwumeck"), min_size=1, max_size=12),
                      min_size=1, max_size=4))  # fmt: skip
def test_handle_many_gives_what_handle_gives_frame_by_frame(reads: list[list[str]]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sl651_server, "datetime", _FixedNow)
        got: dict[str, object] = {}
        want: dict[str, object] = {}
        for many, results in ((True, got), (False, want)):
            heard: list[tuple[str, int]] = []
            unmapped: Counter[tuple[str, str]] = Counter()
            session, peer = _session(heard, unmapped), Peer("sl651", "127.0.0.1:4000")
            messages: list[FieldMessage] = []
            k = 0
            for read in reads:
                frames = [_frame(kind, k + j) for j, kind in enumerate(read)]
                k += len(read)
                if many:
                    messages += session.handle_many(frames, peer, 0)
                else:
                    messages += [m for raw in frames for m in session.handle(raw, peer, 0)]
            results.update(_outcome(messages, heard, peer, unmapped))
    assert got == want
    assert want["readings"] or not any(c in "abxtme" for read in reads for c in read)


def test_acks_hex_is_ack_hex_per_report() -> None:
    when = bcd_time(datetime(2026, 7, 1, 9, 2, 3))
    runs = [("0012345678", 1, "1234", 0x32, [1, 2]), ("0012345678", 2, "1234", 0x32, [3]),
            ("0087654321", 1, "ABCD", 0x34, [65535]), ("0087654321", 1, "ABCD", 0x30, [7]),
            ("0012345678", 1, "1234", 0x32, [4, 5, 6])]  # fmt: skip
    want = b"".join(ack_hex(*run[:4], serial, when) for run in runs for serial in run[4])
    assert acks_hex(runs, when) == want
    assert acks_hex([], when) == b""


def _pieces(bad_end: bool) -> st.SearchStrategy[bytes]:
    sl651 = st.integers(0, 40).map(lambda k: _frame("a", k))
    # Garbage without a start marker byte (7E, SOH), so that a report after it is whole.
    junk = st.binary(min_size=1, max_size=40).map(
        lambda b: b.replace(b"\x7e", b"").replace(b"\x01", b"")
    )
    pieces = [sl651, st.just(KEEP_ALIVE), junk.filter(bool)]
    if bad_end:  # a candidate that does not end as a frame must: handed on to the next marker
        pieces.append(st.integers(0, 40).map(lambda k: _frame("a", k)[:-3] + b"\x99\x00\x00"))
    return st.one_of(*pieces)


def _split(reads: list[bytes]) -> list[tuple[str, bytes, int]]:
    s = Splitter(Sl651Framing(), 16_384)
    out = [item for r in reads for item in s.feed(r)]
    return out + s.close()


def _whole_and_in_order(pieces: list[bytes], got: list[tuple[str, bytes, int]]) -> None:
    """Every byte comes out once (garbage here is under ``max_frame``), in order, and
    each report as one frame."""
    assert b"".join(raw for _, raw, _ in got) == b"".join(pieces)
    frames = [raw for kind, raw, _ in got if kind == "frame"]
    reports = [p for p in pieces if p[:2] == b"\x7e\x7e" and p[-3] == 0x03]
    assert [f for f in frames if f in reports] == reports


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(_pieces(bad_end=False), min_size=1, max_size=10), data=st.data())
def test_splitter_gives_the_same_however_the_bytes_are_read(
    pieces: list[bytes], data: st.DataObject
) -> None:
    """All at once, byte by byte, or in reads cut anywhere: the same frames and garbage.
    (Not so for a candidate with a wrong end: it runs to the next start marker that has
    arrived, by design; the next test.)"""
    stream = b"".join(pieces)
    whole = _split([stream])
    _whole_and_in_order(pieces, whole)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    bounds = [0, *cuts, len(stream)]
    assert _split([stream[a:b] for a, b in pairwise(bounds)]) == whole
    assert _split([stream[i : i + 1] for i in range(len(stream))]) == whole


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(_pieces(bad_end=True), min_size=1, max_size=10))
def test_splitter_hands_on_a_wrong_end_and_keeps_every_byte(pieces: list[bytes]) -> None:
    got = _split([b"".join(pieces)])
    _whole_and_in_order(pieces, got)
    for piece in pieces:
        if (
            piece[:2] == b"\x7e\x7e" and piece[-3] == 0x99
        ):  # handed on as a frame (the decoder names what is wrong)
            assert any(kind == "frame" and raw.startswith(piece) for kind, raw, _ in got)


def test_splitter_hj212_packets_and_garbage() -> None:
    packet = b"##0010ST=32;CN=1;ABCD\r\n"
    stream = b"xx" + packet + packet + b"##12" + packet
    s = Splitter(Hj212Framing(), 1024)
    got = s.feed(stream) + s.close()
    assert got == [("garbage", b"xx", 2), ("frame", packet, len(packet)),
                   ("frame", packet, len(packet)), ("frame", b"##12", 4),
                   ("frame", packet, len(packet))]  # fmt: skip

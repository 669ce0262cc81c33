"""The SL 651 and HJ 212 servers (``connectors.fieldserver`` and the protocols' sessions)
over real loopback TCP, with an in-memory log whose append the test can hold: replies
only after durability, identities and passwords, dead letters with reason, bytes, peer
and station, and the limits that keep a server up whatever a peer sends."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from connectors import hj212, sl651
from connectors.decoded import Rejection
from connectors.fieldserver import Limits, _Batches
from connectors.fieldsession import FieldMessage, Identity
from engine.contracts.batch import Quality
from simulators.hj212_station import Hj212Station
from simulators.sl651_rtu import Sl651Rtu
from simulators.tcp_station import Fault
from tests.fieldserver_support import RunningServer, closed_by_peer, wait_until

T0 = datetime(2026, 7, 1, 9, 50)  # station clock (China Standard Time)
T0_MS = 1_782_870_600_000  # 2026-07-01 01:50 UTC
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def sl() -> Iterator[RunningServer]:
    server = RunningServer("sl651")
    yield server
    server.close()


@pytest.fixture
def hj() -> Iterator[RunningServer]:
    server = RunningServer("hj212")
    yield server
    server.close()


def test_sl651_report_is_ingested_then_acknowledged(sl: RunningServer) -> None:
    rtu = Sl651Rtu()
    sock = sl.connect()
    sl.gate.clear()  # hold the log's append
    sock.sendall(rtu.report(T0)[0])
    wait_until(lambda: sl.counters().get("frames") == 1, what="the frame to arrive")
    sock.settimeout(0.5)
    with pytest.raises(TimeoutError):  # held: not durable, so no acknowledgement
        sock.recv(100)
    assert sl.log.readings == []
    sl.gate.set()
    (reply,) = sl.replies(sock, 1)
    assert sl.log.appends == 1  # the append completed before the reply was written
    ack = sl651.decode(reply)
    assert isinstance(ack, sl651.Frame), ack
    assert (ack.direction, ack.station, ack.function, ack.end) == ("down", "0012345678", 0x32,
                                                                    "ESC")  # fmt: skip
    assert ack.body is not None and ack.body.serial == rtu.serial
    rain, level, volt = rtu.values(T0)
    assert sorted(sl.log.readings) == sorted([
        ("SK01", "rainfall", T0_MS, rain, Quality.UNCHECKED),
        ("SK01", "reservoir_level", T0_MS, level, Quality.UNCHECKED),
        ("SK01", "voltage", T0_MS, volt, Quality.UNCHECKED),
    ])  # fmt: skip
    sock.close()


def test_hj212_data_response_after_durability_and_flags(hj: RunningServer) -> None:
    station = Hj212Station()
    sock = hj.connect()
    hj.gate.clear()
    packets = station.report(datetime(2026, 7, 1, 10, 0))  # real-time and the hourly data
    sock.sendall(b"".join(packets))
    wait_until(lambda: hj.counters().get("frames") == 2, what="the packets to arrive")
    sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        sock.recv(100)
    hj.gate.set()
    replies = [hj212.decode(r) for r in hj.replies(sock, 2)]
    assert all(isinstance(r, hj212.Packet) for r in replies), replies
    sent = [hj212.decode(p) for p in packets]
    for reply, packet in zip(replies, sent, strict=True):
        assert isinstance(reply, hj212.Packet) and isinstance(packet, hj212.Packet)
        assert (reply.cn, reply.header["QN"], reply.mn) == (
            "9014",
            packet.header["QN"],
            "AQ0000000001",
        )
    metrics = {(r[0], r[1]) for r in hj.log.readings}
    assert ("AQ01", "pm2_5") in metrics and ("AQ01", "pm2_5_rt") in metrics
    assert all(r[4] == Quality.GOOD for r in hj.log.readings)  # flag N
    sock.close()


def test_hj212_without_ack_flag_gets_no_reply_but_is_ingested(hj: RunningServer) -> None:
    segment = ("QN=20260701100000000;ST=22;CN=2011;PW=123456;MN=AQ0000000001;Flag=4;"
               "CP=&&DataTime=20260701100000;a34004-Rtd=40.0,a34004-Flag=N&&")  # fmt: skip
    sock = hj.connect()
    sock.sendall(hj212.encode(segment) + Hj212Station().report(T0)[0])
    (reply,) = hj.replies(sock, 1)  # only the second packet (Flag=5) asked
    assert isinstance(hj212.decode(reply), hj212.Packet)
    wait_until(lambda: len(hj.log.readings) == 7, what="readings of both packets")


def test_wrong_password_and_unknown_station_are_dead_lettered_connection_goes_on(
    sl: RunningServer,
) -> None:
    wrong = Sl651Rtu(faults=frozenset({Fault.WRONG_PASSWORD})).report(T0)[0]
    unknown = Sl651Rtu(station="0099999999").report(T0)[0]
    good = Sl651Rtu().report(T0)[0]
    sock = sl.connect()
    sock.sendall(wrong + unknown + good)
    (reply,) = sl.replies(sock, 1)
    ack = sl651.decode(reply)
    assert isinstance(ack, sl651.Frame) and ack.body is not None and ack.body.serial == 1
    wait_until(lambda: len(sl.log.dead) == 2, what="two dead letters")
    port = sock.getsockname()[1]
    assert sl.log.dead == [
        (wrong, "wrong password for SL 651 station 0012345678 (SK01)",
         f"sl651 127.0.0.1:{port}"),
        (unknown, "unknown SL 651 station 0099999999", f"sl651 127.0.0.1:{port}"),
    ]  # fmt: skip
    assert {r[0] for r in sl.log.readings} == {"SK01"}
    # Once the connection's station is known, its dead letters name it.
    sock.sendall(Sl651Rtu(faults=frozenset({Fault.BAD_CRC})).report(T0)[0])
    wait_until(lambda: len(sl.log.dead) == 3, what="the bad CRC's dead letter")
    raw, reason, source = sl.log.dead[2]
    assert reason.startswith("CRC declared") and raw[:2] == b"\x7e\x7e"
    assert source == f"sl651 127.0.0.1:{port} station SK01 (0012345678)"
    sock.close()


def test_unmapped_codes_are_dead_lettered_once_then_counted(hj: RunningServer) -> None:
    segment = ("QN=20260701100000000;ST=22;CN=2011;PW=123456;MN=AQ0000000001;Flag=5;"
               "CP=&&DataTime=20260701100000;a34004-Rtd=40.0,a34004-Flag=N;"
               "LA-Rtd=57.9,LA-Flag=N&&")  # fmt: skip
    sock = hj.connect()
    sock.sendall(hj212.encode(segment) * 3)
    hj.replies(sock, 3)
    wait_until(lambda: len(hj.log.readings) == 3, what="the PM2.5 readings")
    assert [reason for _, reason, _ in hj.log.dead] == [
        "HJ 212 code LA has no Vigil metric: not ingested "
        "(counted from now on, not dead-lettered again)"
    ]
    assert hj.unmapped[("AQ01", "LA")] == 3


def test_garbage_between_frames_is_dead_lettered_and_skipped(sl: RunningServer) -> None:
    good = Sl651Rtu().report(T0)[0]
    sock = sl.connect()
    sock.sendall(b"hello\r\n" + good + b"\x7e\x7e\x00garbage" + b"\x00" * 20 + good)
    replies = sl.replies(sock, 2)
    assert len(replies) == 2
    wait_until(lambda: len(sl.log.dead) == 2, what="two garbage dead letters")
    assert sl.log.dead[0][:2] == (b"hello\r\n", "not a frame: 7 bytes")
    assert sl.log.dead[1][1].startswith("not a frame: ")


def test_a_10_mb_line_closes_that_connection_only(hj: RunningServer) -> None:
    flood = hj.connect()
    with pytest.raises(OSError):
        for _ in range(640):  # 10 MB without a frame; the server closes after 64 KiB
            flood.sendall(b"A" * 16384)
    assert closed_by_peer(flood)
    assert hj.counters()["garbage_closed"] == 1
    kept = sum(len(raw) for raw, _, _ in hj.log.dead)
    assert kept <= Limits().max_garbage_bytes + Limits().max_frame_bytes
    sock = hj.connect()  # the server goes on
    sock.sendall(Hj212Station().report(T0)[0])
    assert len(hj.replies(sock, 1)) == 1


def test_slow_sender_and_idle_connection_are_closed() -> None:
    server = RunningServer("sl651", Limits(linger_ms=5, frame_timeout_s=0.3, idle_timeout_s=0.5))
    try:
        good = Sl651Rtu().report(T0)[0]
        slow = server.connect()
        slow.sendall(good[:10])  # a frame begun, never finished
        assert closed_by_peer(slow)
        idle = server.connect()
        assert closed_by_peer(idle)
        wait_until(lambda: len(server.log.dead) == 1, what="the cut frame's dead letter")
        assert server.log.dead[0][:2] == (
            good[:10],
            "incomplete frame at connection close: 10 bytes",
        )
        assert server.counters()["slow_frame_closed"] == 1
        assert server.counters()["idle_closed"] == 1
    finally:
        server.close()


def test_connections_per_address_limit() -> None:
    server = RunningServer("hj212", Limits(linger_ms=5, max_per_address=3))
    socks: list[socket.socket] = []
    try:
        socks = [server.connect() for _ in range(3)]
        wait_until(lambda: server.server.connections == 3, what="three connections")
        extra = server.connect()
        assert closed_by_peer(extra)
        assert server.counters()["connections_refused"] == 1
        socks[0].sendall(Hj212Station().report(T0)[0])
        assert len(server.replies(socks[0], 1)) == 1
        socks[1].close()
        wait_until(lambda: server.server.connections == 2, what="a slot to free")
        again = server.connect()
        again.sendall(Hj212Station().report(T0)[0])
        assert len(server.replies(again, 1)) == 1
        again.close()
    finally:
        for s in socks:
            s.close()
        server.close()


def test_a_reads_frames_are_taken_as_one_message_and_answered_in_order(
    sl: RunningServer,
) -> None:
    """Three reports in one read: one message through ingest (one batch decode, one
    append), three acknowledgements in the reports' order, after durability."""
    rtu = Sl651Rtu()
    times = [T0 + timedelta(minutes=5 * k) for k in range(3)]
    frames = [rtu.report(t)[0] for t in times]
    sock = sl.connect()
    sl.gate.clear()
    sock.sendall(b"".join(frames))
    wait_until(lambda: sl.counters().get("frames") == 3, what="the frames to arrive")
    sock.settimeout(0.5)
    with pytest.raises(TimeoutError):  # held: not durable, so no acknowledgement
        sock.recv(100)
    sl.gate.set()
    acks = [sl651.decode(r) for r in sl.replies(sock, 3)]
    assert [a.body.serial for a in acks if isinstance(a, sl651.Frame) and a.body] == [1, 2, 3]
    assert sl.counters()["received"] == 1  # frame by frame, it was 3
    assert sl.log.appends == 1
    expected = []
    for k, t in enumerate(times):
        rain, level, volt = rtu.values(t)
        ms = T0_MS + k * 300_000
        expected += [("SK01", "rainfall", ms, rain, Quality.UNCHECKED),
                     ("SK01", "reservoir_level", ms, level, Quality.UNCHECKED),
                     ("SK01", "voltage", ms, volt, Quality.UNCHECKED)]  # fmt: skip
    assert sorted(sl.log.readings) == sorted(expected)
    sock.close()


def test_frames_the_batch_decoder_leaves_keep_their_place_in_the_replies(
    sl: RunningServer,
) -> None:
    """In one read: two reports, a wrong password, a report with a value that feeds no
    metric (decoded frame by frame, dead-lettered once), another report. Replies in
    the frames' order; the dead letters and readings as frame by frame."""
    from connectors.sl651.frame import crc16

    rtu = Sl651Rtu()
    g1, g2 = rtu.report(T0)[0], rtu.report(T0 + timedelta(minutes=5))[0]
    wrong = Sl651Rtu(faults=frozenset({Fault.WRONG_PASSWORD})).report(T0)[0]
    body = bytes.fromhex(
        "0009260701095000F1F100123456784BF0F0260701095001190001233B2300100250"
    )  # serial 9; AC (cross-section area, no Vigil metric) 12.3; ZU 100.250 m
    head = b"\x7e\x7e\x01" + bytes.fromhex("0012345678") + bytes.fromhex("1234") + b"\x32"
    odd = head + len(body).to_bytes(2, "big") + b"\x02" + body + b"\x03"
    odd += crc16(odd).to_bytes(2, "big")
    g3 = rtu.report(T0 + timedelta(minutes=10))[0]
    sock = sl.connect()
    sock.sendall(g1 + g2 + wrong + odd + g3)
    acks = [sl651.decode(r) for r in sl.replies(sock, 4)]
    assert [a.body.serial for a in acks if isinstance(a, sl651.Frame) and a.body] == [1, 2, 9, 3]
    wait_until(lambda: len(sl.log.dead) == 2, what="two dead letters")
    port = sock.getsockname()[1]
    assert sorted(sl.log.dead) == sorted([
        (wrong, "wrong password for SL 651 station 0012345678 (SK01)",
         f"sl651 127.0.0.1:{port} station SK01 (0012345678)"),
        (odd, "SL 651 element 0x01 (AC) has no Vigil metric: not ingested "
              "(counted from now on, not dead-lettered again)",
         f"sl651 127.0.0.1:{port} station SK01 (0012345678)"),
    ])  # fmt: skip
    wait_until(lambda: len(sl.log.readings) == 10, what="the readings")
    assert ("SK01", "reservoir_level", T0_MS, 100.25, Quality.UNCHECKED) in sl.log.readings
    assert sl.unmapped[("SK01", "01")] == 1
    sock.close()


def test_many_connections_at_once(sl: RunningServer) -> None:
    socks = [sl.connect() for _ in range(50)]
    for s in socks:
        s.sendall(Sl651Rtu(station=f"{12345678:010d}").report(T0)[0])
    for s in socks:
        assert len(sl.replies(s, 1)) == 1
        s.close()
    wait_until(lambda: sl.server.connections == 0, what="the connections to close")


def test_multi_packet_message_acknowledged_once(sl: RunningServer) -> None:
    from connectors.sl651.frame import crc16

    body = bytes.fromhex(
        "0007260701095000F1F100123456784BF0F026070109503B2300100250"
    )  # serial 7, send time, station and type K, observation time, ZU 100.250 m
    parts = [body[:12], body[12:]]
    frames = []
    for seq, part in enumerate(parts, 1):
        payload = ((2 << 12) | seq).to_bytes(3, "big") + part
        head = b"\x7e\x7e\x01" + bytes.fromhex("0012345678") + bytes.fromhex("1234") + b"\x34"
        end = b"\x03" if seq == 2 else b"\x17"
        frame = head + len(payload).to_bytes(2, "big") + b"\x16" + payload + end
        frames.append(frame + crc16(frame).to_bytes(2, "big"))
    sock = sl.connect()
    sock.sendall(b"".join(frames))
    (reply,) = sl.replies(sock, 1)
    ack = sl651.decode(reply)
    assert isinstance(ack, sl651.Frame) and ack.body is not None and ack.body.serial == 7
    wait_until(lambda: len(sl.log.readings) == 1, what="the reassembled reading")
    assert sl.log.readings[0][:2] == ("SK01", "reservoir_level")
    assert sl.log.readings[0][3] == 100.25
    assert not isinstance(sl651.decode(frames[0]), Rejection)


def test_wrong_declared_length_is_dead_lettered_with_the_decoders_reason(
    hj: RunningServer,
) -> None:
    """A field capture that declares 888 characters for a 432-character segment (no
    QN, 2005 style; ``shared/data/hj212``): the packet ends at its CRLF, the decoder
    names both lengths, and the good packet after it is answered."""
    bad = DATA.joinpath("hj212/hj212_frames_len_mismatch.txt").read_bytes().split(b"\n")[0]
    bad = bad.rstrip(b"\r") + b"\r\n"
    declared = int(bad[2:6])
    sock = hj.connect()
    sock.sendall(bad + Hj212Station().report(T0)[0])
    assert len(hj.replies(sock, 1)) == 1
    wait_until(lambda: len(hj.log.dead) == 1, what="the dead letter")
    raw, reason, _ = hj.log.dead[0]
    assert raw == bad
    assert reason == f"declared length {declared:04d}, actual {len(bad) - 12:04d}"


def test_sl651_length_mismatch_then_a_good_frame(sl: RunningServer) -> None:
    """A frame that declares 2 bytes fewer than its body has (CRC recomputed, so only
    the length is wrong): the bytes up to the next frame go to the decoder, which names
    both lengths; the next frame is answered."""
    from connectors.sl651.frame import crc16

    good = Sl651Rtu().report(T0)[0]
    head = bytearray(good[:-2])
    head[12] -= 2  # low byte of direction + length
    bad = bytes(head) + crc16(bytes(head)).to_bytes(2, "big")
    sock = sl.connect()
    sock.sendall(bad + good)
    assert len(sl.replies(sock, 1)) == 1
    wait_until(lambda: len(sl.log.dead) == 1, what="the dead letter")
    raw, reason, _ = sl.log.dead[0]
    assert raw == bad
    declared = good[12] - 2
    assert reason == f"declared length {declared:04d}, actual {declared + 2:04d}"


def test_sl651_ascii_mode_frame_between_garbage() -> None:
    """An ASCII-mode frame (FACTS.md vector V8) framed by its SOH header among binary
    bytes that contain 01 (SOH) too; with a matching identity it is ingested."""
    from tests.fieldserver_support import SL651_IDS
    from tests.unit.test_sl651_decode import V

    v8 = bytes.fromhex(V["V8"])
    server = RunningServer("sl651")
    SL651_IDS["5010123456"] = Identity("RV01", "0000")
    try:
        sock = server.connect()
        sock.sendall(b"\x00\x01\x02\x01\xff" + v8 + Sl651Rtu().report(T0)[0])
        (ack, _) = server.replies(sock, 2)  # the ASCII report asks for one too
        reply = sl651.decode(ack)  # in ASCII mode, like the report
        assert isinstance(reply, sl651.Frame), reply
        assert (reply.encoding, reply.direction, reply.station, reply.end) == (
            "ascii",
            "down",
            "5010123456",
            "ESC",
        )
        assert reply.body is not None and reply.body.serial == 1
        wait_until(lambda: len(server.log.readings) == 5, what="both frames' readings")
        assert {r[0] for r in server.log.readings} == {"RV01", "SK01"}
        assert [reason for _, reason, _ in server.log.dead] == ["not a frame: 5 bytes"]
    finally:
        del SL651_IDS["5010123456"]
        server.close()


def test_half_open_sockets_beyond_the_limit_are_refused_then_idle_closed() -> None:
    """Sockets that connect and never send: past ``max_connections`` refused at once,
    the rest closed when idle; then the server takes a station again."""
    server = RunningServer("sl651", Limits(linger_ms=5, max_connections=20,
                                           max_per_address=1000, idle_timeout_s=1.0))  # fmt: skip
    socks: list[socket.socket] = []
    try:
        socks = [server.connect() for _ in range(60)]
        assert all(closed_by_peer(s) for s in socks)  # refused, or idle-closed
        counters = server.counters()
        assert counters["connections_refused"] >= 40
        assert counters["connections_refused"] + counters["idle_closed"] == 60
        wait_until(lambda: server.server.connections == 0, what="all to close")
        sock = server.connect()
        sock.sendall(Sl651Rtu().report(T0)[0])
        assert len(server.replies(sock, 1)) == 1
        sock.close()
    finally:
        for s in socks:
            s.close()
        server.close()


def test_batches_take_messages_up_to_max_readings_the_rest_after() -> None:
    """The server's batching: a batch ends with the message that reaches
    ``max_readings``; what is left is the next batch, taken after the linger."""

    def message(n: int) -> FieldMessage:
        return FieldMessage("t", b"", 0, None, readings=[("S", "m", k, 1.0) for k in range(n)])

    async def run() -> list[list[int]]:
        batches = _Batches(max_readings=10, linger_ms=20)
        for n in (6, 6, 6, 1):
            batches.put(message(n))
        first = await batches.next_batch()
        second = await batches.next_batch()
        return [[len(m.readings) for m in first], [len(m.readings) for m in second]]

    assert asyncio.run(run()) == [[6, 6], [6, 1]]

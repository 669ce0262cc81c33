"""The SL 651 RTU and HJ 212 station simulators against a tiny asyncio TCP server on a
loopback port that decodes what arrives with the project's decoders."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from connectors import hj212, sl651
from connectors.decoded import Rejection
from simulators.hj212_station import Hj212Station
from simulators.sl651_rtu import Sl651Rtu
from simulators.tcp_station import Fault, run_station

T0 = datetime(2026, 7, 1, 9, 50)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _sl651_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(13)
    length = int.from_bytes(head[11:13], "big") & 0x0FFF
    return head + await reader.readexactly(1 + length + 3)


def serve(protocol: str, drop_first: bool) -> tuple[list[object], Handler]:
    got: list[object] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        try:
            while True:
                if protocol == "sl651":
                    got.append(sl651.decode(await _sl651_frame(reader)))
                else:
                    line = await reader.readuntil(b"\r\n")
                    got.append(hj212.decode(line))
                if first and drop_first:  # a drop: the station must reconnect
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    return got, handle


async def _run(
    protocol: str,
    station: object,
    faults: frozenset[Fault],
    count: int,
    drop_first: bool = False,
    expect: int | None = None,
) -> tuple[list[object], int]:
    got, handle = serve(protocol, drop_first)
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reconnects = await run_station("127.0.0.1", port, station.report, T0,  # type: ignore[attr-defined]
                                   timedelta(minutes=5), count, 0.01,
                                   slow=Fault.SLOW in faults)  # fmt: skip
    for _ in range(500):  # wait for the server to take the last frame
        if len(got) >= (count if expect is None else expect):
            break
        await asyncio.sleep(0.01)
    server.close()
    await server.wait_closed()
    return got, reconnects


def test_sl651_rtu_reports_reconnects_and_decodes() -> None:
    got, reconnects = asyncio.run(
        _run("sl651", Sl651Rtu(), frozenset(), 4, drop_first=True, expect=3)
    )
    assert reconnects >= 1
    # The report written into the dropped socket is lost (TCP took it; only the
    # protocol's acknowledgement, which this simulator does not await, would tell).
    frames = [f for f in got if isinstance(f, sl651.Frame)]
    assert len(frames) >= 3
    assert {r.metric for f in frames for r in f.readings} == {"rainfall", "reservoir_level",
                                                              "voltage"}  # fmt: skip
    last = max(r.ts_ms for f in frames for r in f.readings)  # the 4th report got through
    first = min(r.ts_ms for f in frames for r in f.readings)
    assert last - first == 15 * 60_000


def test_sl651_faults() -> None:
    bad, _ = asyncio.run(_run("sl651", Sl651Rtu(faults=frozenset({Fault.BAD_CRC})),
                              frozenset(), 2))  # fmt: skip
    assert all(isinstance(f, Rejection) and f.reason.startswith("CRC declared") for f in bad)
    dup, _ = asyncio.run(_run("sl651", Sl651Rtu(faults=frozenset({Fault.DUPLICATE,
                                                                  Fault.WRONG_PASSWORD})),
                              frozenset({Fault.SLOW}), 2))  # fmt: skip
    frames = [f for f in dup if isinstance(f, sl651.Frame)]
    assert len(frames) == 4 and {f.password for f in frames} == {"FFFF"}
    skew = Sl651Rtu(faults=frozenset({Fault.CLOCK_SKEW})).report(T0)[0]
    frame = sl651.decode(skew)
    assert isinstance(frame, sl651.Frame) and frame.body is not None
    plain = sl651.decode(Sl651Rtu().report(T0)[0])
    assert isinstance(plain, sl651.Frame) and plain.body is not None
    assert frame.body.send_ms - plain.body.send_ms == 3600_000
    cut = Sl651Rtu(faults=frozenset({Fault.TRUNCATED})).report(T0)[0]
    assert isinstance(sl651.decode(cut), Rejection)


def test_hj212_station_hourly_and_real_time() -> None:
    got, _ = asyncio.run(_run("hj212", Hj212Station(), frozenset(), 3, expect=4))
    packets = [p for p in got if isinstance(p, hj212.Packet)]
    assert [p.cn for p in packets] == ["2011", "2011", "2011", "2061"]  # 10:00 is on the hour
    assert all(hj212.wants_reply(p) for p in packets)
    hourly = next(p for p in packets if p.cn == "2061")
    assert {r.metric for r in hourly.readings} >= {"pm2_5", "pm10", "so2", "no2", "co", "o3"}
    bad, _ = asyncio.run(_run("hj212", Hj212Station(faults=frozenset({Fault.BAD_CRC})),
                              frozenset(), 1))  # fmt: skip
    assert isinstance(bad[0], Rejection) and bad[0].reason.startswith("CRC declared")

"""The TCP side shared by the field-protocol station simulators: connect, send each
report's frames, reconnect after a drop (and send the report that failed again), hand
what the centre sends back to ``on_reply``, and write slowly when asked (a sender that
dribbles bytes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = ["Fault", "run_station"]

log = logging.getLogger(__name__)


class Fault(StrEnum):
    BAD_CRC = "bad_crc"
    TRUNCATED = "truncated"
    WRONG_PASSWORD = "wrong_password"
    CLOCK_SKEW = "clock_skew"  # the station's clock runs an hour ahead
    DUPLICATE = "duplicate"  # the same report twice
    SLOW = "slow"  # one byte at a time


def damage(
    frame: bytes, faults: frozenset[Fault], bad_crc: Callable[[bytes], bytes]
) -> list[bytes]:
    """The frames that go on the wire for one report under ``faults``; ``bad_crc``
    spoils the frame's CRC (the protocols write it differently)."""
    if Fault.BAD_CRC in faults:
        frame = bad_crc(frame)
    if Fault.TRUNCATED in faults:
        frame = frame[: len(frame) // 2]
    return [frame, frame] if Fault.DUPLICATE in faults else [frame]


async def run_station(
    host: str,
    port: int,
    report: Callable[[datetime], list[bytes]],
    start: datetime,
    step: timedelta,
    count: int,
    interval_s: float,
    slow: bool = False,
    reconnect_s: float = 0.2,
    on_reply: Callable[[bytes], None] | None = None,
) -> int:
    """Send ``count`` reports, the station's clock starting at ``start`` and advancing
    ``step`` a report, one report every ``interval_s`` of wall time. Bytes the centre
    sends back go to ``on_reply`` as they arrive (chunks, not frames). Returns how many
    times it had to reconnect."""
    reconnects = 0
    writer: asyncio.StreamWriter | None = None
    readers: list[asyncio.Task[None]] = []
    i = 0
    while i < count:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
                if on_reply is not None:
                    readers.append(asyncio.ensure_future(_replies(reader, on_reply)))
            for frame in report(start + i * step):
                if slow:
                    for b in frame:
                        writer.write(bytes([b]))
                        await writer.drain()
                        await asyncio.sleep(0.001)
                else:
                    writer.write(frame)
                await writer.drain()
            i += 1
            await asyncio.sleep(interval_s)
        except OSError as exc:  # refused, reset, broken pipe: the report is sent again
            log.info("station connection lost (%s); reconnecting", exc)
            if writer is not None:
                writer.close()
            writer = None
            reconnects += 1
            await asyncio.sleep(reconnect_s)
    if writer is not None:
        if readers:  # let the centre answer the last reports before hanging up
            writer.write_eof()
            await asyncio.wait(readers, timeout=30)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    for task in readers:
        task.cancel()
    return reconnects


async def _replies(reader: asyncio.StreamReader, on_reply: Callable[[bytes], None]) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            on_reply(chunk)

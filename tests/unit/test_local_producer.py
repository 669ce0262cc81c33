"""The embedded transport's producer writes off the event loop, durably and in order."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import faust
import pytest

from engine.runtime.transport.local import Transport


def test_the_loop_goes_on_while_a_write_is_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = faust.App("t-producer", broker=f"local://{tmp_path}", autodiscover=False)
    transport = app.transport
    assert isinstance(transport, Transport)
    transport.create_topic("t", 1)
    producer = transport.create_producer()
    log = transport.log
    real_append = log.append
    # A slow disk: the write holds until the event loop has done something else, which it
    # can only do if the write is not on the loop (else this waits the 20 s out: False).
    loop_moved = threading.Event()
    waited: list[bool] = []

    def slow_append(records: Any) -> list[int]:
        waited.append(loop_moved.wait(timeout=20))
        return real_append(records)

    monkeypatch.setattr(log, "append", slow_append)

    async def go() -> list[int]:
        first = await producer.send("t", None, b"a", 0, None, None)
        await asyncio.sleep(0)  # the write starts
        second = await producer.send("t", None, b"b", 0, None, None)  # while it is on disk
        loop_moved.set()
        done = [await first, await second]
        await producer.flush()
        return [m.offset for m in done]

    offsets = asyncio.run(go())
    assert waited == [True, True]  # the first write let the loop go on; then the second
    assert offsets == [0, 1]  # in order, each after its own durable write
    assert [r.value for r in log.read("t", 0, 0, 10)] == [b"a", b"b"]

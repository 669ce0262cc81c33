"""A small Faust app on ``local://`` for the transport tests (run as a child process).

``numbers`` -> agent ``relay`` (``stream.take``) -> ``relayed`` -> agent ``count``,
which keeps a Table of counts per key (changelog-backed) and appends every event it
sees to ``seen.txt`` with the table's count after it. The data directory is argv[1].
"""

from __future__ import annotations

import sys
from pathlib import Path

import faust

DATA = Path(sys.argv[1])

app = faust.App(
    "counter-test",
    broker=f"local://{DATA}",
    store="memory://",
    datadir=str(DATA / "faust"),
    topic_partitions=3,
    web_enabled=False,
    autodiscover=False,
    broker_commit_interval=0.2,
)
numbers = app.topic("numbers", key_serializer="raw", value_serializer="raw")
relayed = app.topic("relayed", key_serializer="raw", value_serializer="raw")
counts = app.Table("counts", default=int, partitions=3)


@app.agent(numbers)
async def relay(stream):  # type: ignore[no-untyped-def]
    async for values in stream.take(50, within=0.2):
        for value in values:
            await relayed.send(key=value.split(b":")[0], value=value)


@app.agent(relayed)
async def count(stream):  # type: ignore[no-untyped-def]
    with (DATA / "seen.txt").open("a") as out:
        async for event in stream.events():
            key = event.key.decode()
            counts[key] += 1
            out.write(f"{event.value.decode()} {counts[key]}\n")
            out.flush()


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()

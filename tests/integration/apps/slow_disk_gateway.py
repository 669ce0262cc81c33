"""``vigil run`` on a slow disk: each ingest batch is written at once but durable only
``SLOW_FSYNC_S`` later, as on an SD card under load, so that a batch is almost always
in hand when a signal comes (run as a child process).

argv[1]: the settings file.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from engine.runtime.config import load_settings
from engine.runtime.services.gateway import Gateway

#: How long after its write a batch becomes durable (seconds).
SLOW_FSYNC_S = 0.2


if __name__ == "__main__":
    gateway = Gateway(load_settings(sys.argv[1]))
    produce = gateway.ingest._produce

    async def _slow(readings: Any) -> None:
        await produce(readings)  # in the log: a restart finds it there
        await asyncio.sleep(SLOW_FSYNC_S)  # the ingest acknowledges it only after this

    gateway.ingest._produce = _slow
    gateway.run(loglevel="warn")

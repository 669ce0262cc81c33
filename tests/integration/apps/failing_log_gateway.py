"""``vigil run`` whose telemetry log cannot be written: its ingest task fails on the
first batch, as it would on a full or broken disk (run as a child process).

argv[1]: the settings file.
"""

from __future__ import annotations

import sys

from engine.runtime.config import load_settings
from engine.runtime.services.gateway import Gateway


async def _unwritable(readings: object) -> None:
    raise OSError("injected: the telemetry log cannot be written")


if __name__ == "__main__":
    gateway = Gateway(load_settings(sys.argv[1]))
    gateway.ingest._produce = _unwritable
    gateway.run(loglevel="warn")

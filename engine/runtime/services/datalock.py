"""One gateway per data directory: an exclusive lock taken before anything opens it.

RocksDB refuses a second opener too, but with a 50-line traceback from deep inside
Faust's startup; this lock is taken first and says it in one line. The lock is an
``flock`` on ``<data_dir>/vigil.lock``, released by the kernel when the process ends
(however it ends), so a crash never leaves a stale lock behind. The file holds the
owner's pid, for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

__all__ = ["DataDirInUse", "lock_data_dir"]

LOCK_NAME = "vigil.lock"


class DataDirInUse(RuntimeError):
    """Another process holds the data directory; the message is the line to print."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Lock ``data_dir`` for this process; keep the returned file open as long as the
    process uses the directory. Raises ``DataDirInUse`` naming the holder's pid."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DataDirInUse(
            f"vigil: data directory {data_dir} is in use by another vigil process "
            f"(pid {holder}); stop it first, or give this one another data_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle

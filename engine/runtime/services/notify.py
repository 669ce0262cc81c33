"""systemd's readiness and watchdog protocol (``sd_notify``), without libsystemd.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. The service sends
datagrams of ``KEY=value`` lines: ``READY=1`` once it serves, ``WATCHDOG=1`` at least
every ``WATCHDOG_USEC`` (we send at half of it), ``STOPPING=1`` as it begins to stop,
``STATUS=...`` for ``systemctl status``. Without ``NOTIFY_SOCKET`` every call is a no-op,
so the same code runs under any supervisor. A failed send is logged, never raised: the
protocol is advisory, and a gateway must not stop because its supervisor went away.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends ``sd_notify`` messages to ``environ["NOTIFY_SOCKET"]`` when it is set."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET") or None
        if path is not None and path.startswith("@"):
            path = "\0" + path[1:]  # the abstract namespace
        self.address = path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        #: Seconds between watchdog pings (half systemd's timeout), None without one.
        self.watchdog_interval_s: float | None = (
            int(usec) / 2_000_000 if usec.isdigit() and int(usec) > 0 and mine else None
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> None:
        """``send(READY=1, STATUS="subscribed")`` -> ``READY=1\\nSTATUS=subscribed``."""
        if self.address is None:
            return
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as exc:
            log.warning("sd_notify to %r failed: %s", self.address, exc)

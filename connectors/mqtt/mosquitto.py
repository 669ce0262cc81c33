"""A real mosquitto broker on a free loopback port, for the demo and the tests.

Uses the ``mosquitto`` binary from Debian's packages (``make demo`` and ``make test``
install it), configured from the file Vigil ships for production (``CONFIG``), with its
own port, folder and log; a test may ``override`` settings (to run a stock broker, say).
Raises ``MosquittoUnavailable`` with the reason when it cannot start: callers fail, they
never skip.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

__all__ = ["CONFIG", "Mosquitto", "MosquittoUnavailable", "free_port"]

#: The broker configuration Vigil needs (README: "What Vigil needs from the broker").
CONFIG = Path(__file__).with_name("vigil-mosquitto.conf")


class MosquittoUnavailable(RuntimeError):
    """mosquitto is not installed or did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise MosquittoUnavailable(
            "mosquitto is not installed: run `make system-deps` (apt-get install mosquitto)"
        )
    return found


class Mosquitto:
    """``with Mosquitto() as broker: broker.port`` -- started, then stopped and cleaned."""

    def __init__(
        self,
        port: int | None = None,
        timeout: float = 10.0,
        override: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._timeout = timeout
        self._override = dict(override or {})
        self._dir = Path(tempfile.mkdtemp(prefix="vigil-mosquitto-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self._dir / "mosquitto.log"

    def config(self) -> str:
        """``CONFIG`` with this broker's port, folder, log and overrides: a directive
        named in them replaces every line of that directive."""
        ours = {
            "listener": f"{self.port} 127.0.0.1",
            "persistence_location": f"{self._dir}/",
            "log_dest": f"file {self.log_path}",
            **self._override,
        }
        lines = []
        for line in CONFIG.read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line.strip() else ""
            if key and not key.startswith("#") and key not in ours:
                lines.append(line)
        lines += [f"{key} {value}" for key, value in ours.items()]
        return "\n".join(lines) + "\n"

    def start(self) -> Mosquitto:
        conf = self._dir / "mosquitto.conf"
        conf.write_text(self.config())
        self._proc = subprocess.Popen(
            [_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise MosquittoUnavailable(f"mosquitto exited at start: {err.strip()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise MosquittoUnavailable(f"mosquitto did not listen on port {self.port} in time")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

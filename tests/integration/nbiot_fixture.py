"""What the NB-IoT gateway tests share: the gateway as a child process that is ready
once both its MQTT and its NB-IoT ingest are up, a free UDP port, and what the gateway
left in its embedded log."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
from collections import Counter
from pathlib import Path

import aiocoap

from engine.contracts.batch import TelemetryBatch
from engine.runtime.transport.log import DurableLog
from tests.integration.conftest import EngineProcess

__all__ = ["APP_ID", "NbiotEngine", "free_udp_port", "log_contents"]

#: The app id of ``conftest.write_settings``: the log's topics are named after it.
APP_ID = "vigil-test"
_READY = ("ingest subscribed", "nbiot ingest listening")


class NbiotEngine(EngineProcess):
    """The gateway, started once both its MQTT and its NB-IoT ingest are up; a gateway
    that exits before is reported at once with its log, not after the timeout."""

    def start(self, timeout: float = 120.0) -> None:
        # An event of this process's own: the watcher of one killed before still ends
        # by setting its own, and that must not end this one's wait.
        self._subscribed = threading.Event()
        super().start(timeout)
        assert self.proc is not None
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def _watch(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        ready, lines, seen = self._subscribed, self.lines, set()
        for line in proc.stdout:
            lines.append(line)
            seen.update(what for what in _READY if what in line)
            if len(seen) == len(_READY):
                ready.set()
        proc.wait()
        ready.set()  # it exited: start() stops waiting and says so


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_contents(data: Path) -> tuple[set[tuple[str, str, int]], Counter[str], bool]:
    """(station, metric, ts_ms) of every reading in the telemetry log, the dead
    letters' reasons counted, and whether the gateway committed all it consumed."""
    log = DurableLog(data)
    try:
        logged: set[tuple[str, str, int]] = set()
        name = f"{APP_ID}-telemetry"
        for p in range(log.partitions(name) or 0):
            for rec in log.read(name, p, 0, 10**9):
                logged.update(
                    (s, m, t) for s, m, t, _, _ in TelemetryBatch.decode(rec.value).rows()
                )
        reasons: Counter[str] = Counter()
        name = f"{APP_ID}-dead-letter"
        for p in range(log.partitions(name) or 0):
            for rec in log.read(name, p, 0, 10**9):
                reasons[dict(rec.headers)["vigil-reason"].decode()] += 1
        done = all(
            (log.committed(APP_ID, f"{APP_ID}-{t}", p) or 0) == log.highwater(f"{APP_ID}-{t}", p)
            for t in ("telemetry", "alerts", "corroboration")
            for p in range(log.partitions(f"{APP_ID}-{t}") or 0)
        )
        return logged, reasons, done
    finally:
        log.close()


async def coap_post(port: int, identity: str, payload: bytes) -> aiocoap.Message:
    """POST ``payload`` to ``coap://127.0.0.1:<port>/nb/<identity>`` with a real aiocoap
    client; its answer (60 s at most)."""
    ctx = await aiocoap.Context.create_client_context()
    try:
        req = aiocoap.Message(
            code=aiocoap.POST, uri=f"coap://127.0.0.1:{port}/nb/{identity}", payload=payload
        )
        return await asyncio.wait_for(ctx.request(req).response, 60)
    finally:
        await ctx.shutdown()


def udp_send(port: int, data: bytes) -> bytes:
    """Send one datagram to the gateway's UDP port on loopback; its answer (60 s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(60)
        s.sendto(data, ("127.0.0.1", port))
        return s.recv(64)

"""A field-protocol server (``connectors.fieldserver``) running on its own event loop in a
thread, on a free loopback port, with an in-memory durable log: what ``produce`` and
``dead_letter`` got, and a gate that holds the append (nothing is durable until the test
opens it). Tests talk to it over real TCP with blocking sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from connectors.fieldserver import FieldServer, Limits
from connectors.fieldsession import Identity, Protocol
from connectors.framing import Splitter
from connectors.hj212.server import Hj212Framing, Hj212Session
from connectors.ingest import Reading
from connectors.sl651.server import Sl651Framing, Sl651Session
from engine.contracts.batch import Quality, ReadingBlock

SL651_IDS = {"0012345678": Identity("SK01", "1234")}
HJ212_IDS = {"AQ0000000001": Identity("AQ01", "123456")}


@dataclass
class Log:
    readings: list[Reading] = field(default_factory=list)
    dead: list[tuple[bytes, str, str]] = field(default_factory=list)
    appends: int = 0  # produce calls that completed


FAST = Limits(linger_ms=5)


class RunningServer:
    def __init__(self, protocol: str, limits: Limits = FAST) -> None:
        self.protocol = protocol
        self.log = Log()
        self.gate = threading.Event()
        self.gate.set()
        self.unmapped: Counter[tuple[str, str]] = Counter()
        self.framing = Sl651Framing() if protocol == "sl651" else Hj212Framing()
        self.loop = asyncio.new_event_loop()
        self.server = FieldServer(protocol, "127.0.0.1", 0, self.framing, self._session,
                                  self._produce, self._dead_letter, limits)  # fmt: skip
        started = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10), "server did not start"

    @property
    def port(self) -> int:
        return self.server.port

    def _main(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        started.set()
        self.loop.run_forever()

    def _session(self) -> Protocol:
        if self.protocol == "sl651":
            return Sl651Session(lambda: SL651_IDS, self.unmapped)
        return Hj212Session(lambda: HJ212_IDS, self.unmapped)

    async def _produce(self, readings: list[Reading | ReadingBlock]) -> None:
        while not self.gate.is_set():  # held: nothing is durable yet
            await asyncio.sleep(0.005)
        for r in readings:  # a block as the tuples it stands for
            if isinstance(r, ReadingBlock):
                self.log.readings += [(r.station, r.metric, t, v, Quality.UNCHECKED)
                                      for t, v in zip(r.ts, r.value, strict=True)]  # fmt: skip
            else:
                self.log.readings.append(r)
        self.log.appends += 1

    async def _dead_letter(self, raw: bytes, reason: str, source: str) -> None:
        while not self.gate.is_set():
            await asyncio.sleep(0.005)
        self.log.dead.append((raw, reason, source))

    def counters(self) -> dict[str, int]:
        return dict(self.server.counters)

    def close(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop)
        fut.result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def replies(self, sock: socket.socket, n: int, timeout: float = 30.0) -> list[bytes]:
        """The next ``n`` frames the server sends on ``sock``."""
        splitter = Splitter(self.framing, 1 << 16)
        got: list[bytes] = []
        sock.settimeout(timeout)
        while len(got) < n:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(got)} of {n} replies"
            got += [raw for kind, raw, _ in splitter.feed(chunk) if kind == "frame"]
        return got


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def closed_by_peer(sock: socket.socket, timeout: float = 30.0) -> bool:
    """True once the server has closed ``sock`` (EOF or reset), within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True

"""What the field-protocol TCP servers (SL 651, HJ 212) share: connections, framing,
limits, identities, and the hand-over to ``connectors.ingest.deliver``.

A protocol supplies a :class:`connectors.framing.Framing` (where a frame starts and how
long it is) and a ``Protocol`` session per connection (frame bytes -> ``FieldMessage`` s;
both in ``connectors.fieldsession``). This module does the rest, the same for both:

* **Durable, then reply.** The complete frames of each read go to the session at once
  (``handle_many``), which makes :class:`FieldMessage` s of them (the accepted frames'
  readings and replies together, a message per dead letter); they go through
  ``deliver`` (the durable append and dead letters MQTT uses) in batches across
  connections, a batch every ``linger_ms`` or ``max_readings``; a message's ``ack``
  writes the protocol's replies, so a station hears back only once its readings, or the
  frame's dead-letter record, are in the log. A rejected frame gets no reply: the
  station sends it again, or an operator reads the dead letter. Connections and the
  batching share the event loop: no per-frame hand-over between threads.
* **Bounded whatever a peer does.** At most ``max_connections`` connections and
  ``max_per_address`` from one address (more are closed at once); a connection is
  closed after ``idle_timeout_s`` without a byte, or when a frame it started is not
  complete ``frame_timeout_s`` later (a slow sender), or after ``max_garbage_bytes``
  that are no frame (a 10 MB line). A frame may be ``max_frame_bytes`` at most. A
  connection holds at most ``max_inflight`` messages (each at most a read's frames, or
  one dead letter) awaiting durability before it stops reading (TCP back-pressure
  reaches the sender). So memory is bounded by the limits, not by what peers send.
* **Dead letters with the bytes.** A bad frame, a run of garbage (its first
  ``max_frame_bytes`` kept, the count in the reason) and a frame cut short by a close
  are dead-lettered with the reason, the raw bytes, the peer address and the
  connection's station (``source``: ``sl651 10.0.0.7:40211 station SK01 (0012345678)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from connectors.decoded import blocks
from connectors.fieldsession import FieldMessage, Peer, Protocol
from connectors.framing import Framing, Splitter
from connectors.ingest import DeadLetter, Inbound, PayloadError, Produce, Reading, deliver
from engine.contracts.batch import ReadingBlock

__all__ = ["FieldServer", "Limits"]

log = logging.getLogger(__name__)

#: Seconds a closing connection waits for the replies to its frames in flight.
DRAIN_S = 30.0


@dataclass(frozen=True)
class Limits:
    """Per-server bounds (bytes, seconds, counts); see the module docstring."""

    max_frame_bytes: int = 16_384
    idle_timeout_s: float = 300.0
    frame_timeout_s: float = 60.0
    max_connections: int = 10_000
    max_per_address: int = 64
    max_inflight: int = 32
    max_garbage_bytes: int = 65_536
    #: Readings per telemetry batch and how long a batch waits for more (as MQTT's).
    max_readings: int = 5000
    linger_ms: int = 50


class _Batches:
    """Messages put by the connections, taken by the batching task once ``max_readings``
    readings are in or ``linger_ms`` after the first: messages up to the one that
    reaches ``max_readings``. Event loop only (both sides run on it)."""

    def __init__(self, max_readings: int, linger_ms: int) -> None:
        self.max_readings = max_readings
        self.linger_s = linger_ms / 1000
        self._items: list[FieldMessage] = []
        self._readings = 0
        self._some = asyncio.Event()
        self._full = asyncio.Event()

    @staticmethod
    def _count(m: FieldMessage) -> int:
        return len(m.readings) + sum(len(c.ts) for c in m.columns)

    def put(self, m: FieldMessage) -> None:
        self._items.append(m)
        self._readings += self._count(m)
        self._some.set()
        if self._readings >= self.max_readings:
            self._full.set()

    async def next_batch(self) -> list[FieldMessage]:
        await self._some.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.linger_s):
                await self._full.wait()
        n, taken = 0, 0
        for m in self._items:
            n += 1
            taken += self._count(m)
            if taken >= self.max_readings:
                break
        batch, self._items = self._items[:n], self._items[n:]
        self._readings -= taken
        self._full.clear()
        if not self._items:
            self._some.clear()
        elif self._readings >= self.max_readings:
            self._full.set()
        return batch


class FieldServer:
    """An asyncio TCP server for one field protocol, feeding ``deliver``.

    ``session()`` makes a connection's protocol session. ``produce`` and ``dead_letter``
    resolve once durable (``connectors.ingest``). ``join`` raises if the batching task
    fails (the log cannot be written): the owner must end the process.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        framing: Framing,
        session: Callable[[], Protocol],
        produce: Produce,
        dead_letter: DeadLetter,
        limits: Limits = Limits(),
    ) -> None:
        self.name = name
        self.host, self.port = host, port
        self.framing = framing
        self.session = session
        self.limits = limits
        self._produce = produce
        self._dead_letter = dead_letter
        self.counters: Counter[str] = Counter()
        self._per_address: Counter[str] = Counter()
        self._connections = 0
        self._batcher = _Batches(limits.max_readings, limits.linger_ms)
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def connections(self) -> int:
        return self._connections

    async def start(self) -> None:
        """Listen; ``self.port`` is then the bound port (useful when 0 was asked)."""
        self._task = asyncio.ensure_future(self._run())
        self._server = await asyncio.start_server(
            self._serve,
            self.host,
            self.port,
            limit=self.limits.max_frame_bytes,  # the stream's own buffer is bounded too
            backlog=1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def join(self) -> None:
        """Wait for the batching task: raises what made it fail (shielded, like MQTT's)."""
        assert self._task is not None, "join() before start()"
        await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stop listening and close connections; what was not yet durable is not
        replied to, so stations send it again."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for task in list(self._handlers):  # one may wait for replies that will not come
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    # ---- batching ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            batch = await self._batcher.next_batch()
            _join_columns(batch)
            await deliver(batch, _decode, self._produce, self._dead_letter, self.counters)

    # ---- connections ---------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername") or ("?", 0)
        host = str(peername[0])
        limits = self.limits
        if self._connections >= limits.max_connections or (
            self._per_address[host] >= limits.max_per_address
        ):
            self.counters["connections_refused"] += 1
            writer.transport.abort()
            return
        self._connections += 1
        self._per_address[host] += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self.counters["connections"] += 1
        peer = Peer(self.name, f"{host}:{peername[1]}")
        try:
            await self._read(reader, writer, peer)
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection %s lost: %s", self.name, peer.address, exc)
        finally:
            self._connections -= 1
            self._per_address[host] -= 1
            if not self._per_address[host]:
                del self._per_address[host]
            self._writers.discard(writer)
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    async def _read(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
        limits = self.limits
        loop = asyncio.get_running_loop()
        splitter = Splitter(self.framing, limits.max_frame_bytes)
        session = self.session()
        inflight = asyncio.Semaphore(limits.max_inflight)
        garbage = 0  # bytes of this connection that were no frame
        frame_started: float | None = None  # loop time the pending partial frame began
        try:
            while True:
                deadline = loop.time() + limits.idle_timeout_s
                if frame_started is not None:
                    deadline = min(deadline, frame_started + limits.frame_timeout_s)
                try:
                    async with asyncio.timeout_at(deadline):
                        data = await reader.read(limits.max_frame_bytes)
                except TimeoutError:
                    why = "slow_frame_closed" if frame_started is not None else "idle_closed"
                    self.counters[why] += 1
                    return
                if not data:
                    return
                received_ms = _now_ms()
                messages: list[FieldMessage] = []
                frames: list[bytes] = []
                for kind, raw, n in splitter.feed(data):
                    if kind == "frame":
                        self.counters["frames"] += 1
                        frames.append(raw)
                        continue
                    if frames:  # the frames before this garbage, in their order
                        messages += _safe_handle_many(session, frames, peer, received_ms)
                        frames = []
                    garbage += n
                    messages.append(_garbage(raw, n, peer, received_ms))
                if frames:
                    messages += _safe_handle_many(session, frames, peer, received_ms)
                for m in messages:
                    await inflight.acquire()  # back-pressure: stop reading when full
                    m.ack = _acker(m, writer, inflight)
                    self._batcher.put(m)
                if garbage + splitter.garbage_total > limits.max_garbage_bytes:
                    self.counters["garbage_closed"] += 1
                    return
                if not splitter.pending():
                    frame_started = None
                elif frame_started is None:
                    frame_started = loop.time()
        finally:
            for _, raw, n in splitter.close():
                m = _garbage(raw, n, peer, _now_ms(), cut=True)
                m.ack = _nothing
                self._batcher.put(m)
            # A station that half-closes still hears the replies to what it sent (not
            # when the server stops: nothing more becomes durable then).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_S):
                    for _ in range(limits.max_inflight):
                        if self._stopping:
                            break
                        await inflight.acquire()


def _join_columns(batch: list[FieldMessage]) -> None:
    """The batch's columns, of every connection, as one block per sensor: given to the
    first message that has any (all are appended together and acknowledged after)."""
    having = [m for m in batch if m.columns]
    if having:
        having[0].readings = [*having[0].readings, *blocks([c for m in having for c in m.columns])]
        for m in having:
            m.columns = []


def _nothing() -> None:
    """The ack of a dead letter written after its connection ended: nothing to send."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _decode(m: Inbound) -> Sequence[Reading | ReadingBlock]:
    assert isinstance(m, FieldMessage)
    if m.reason is not None:
        raise PayloadError(m.reason)
    return m.readings


def _safe_handle_many(
    session: Protocol, frames: list[bytes], peer: Peer, received_ms: int
) -> list[FieldMessage]:
    """The session's messages for a read's frames; if it raises (a bug), frame by frame
    again, so that only the frame it failed on is dead-lettered."""
    try:
        return session.handle_many(frames, peer, received_ms)
    except Exception:
        log.exception("%s: unexpected error on frames from %s", peer.protocol, peer.address)
        return [m for raw in frames for m in _safe_handle(session, raw, peer, received_ms)]


def _safe_handle(session: Protocol, raw: bytes, peer: Peer, received_ms: int) -> list[FieldMessage]:
    """The session's messages; an exception it did not mean is this frame's dead letter."""
    try:
        return session.handle(raw, peer, received_ms)
    except Exception as exc:
        log.exception("%s: unexpected error on a frame from %s", peer.protocol, peer.address)
        return [FieldMessage(peer.source(), raw, received_ms, None,
                             reason=f"ingest error: {type(exc).__name__}: {exc}")]  # fmt: skip


def _garbage(
    raw: bytes, total: int, peer: Peer, received_ms: int, cut: bool = False
) -> FieldMessage:
    if cut:
        reason = f"incomplete frame at connection close: {total} bytes"
    elif total > len(raw):
        reason = f"not a frame: {total} bytes, the first {len(raw)} kept"
    else:
        reason = f"not a frame: {total} bytes"
    return FieldMessage(peer.source(), raw, received_ms, None, reason=reason)


def _acker(
    m: FieldMessage, writer: asyncio.StreamWriter, inflight: asyncio.Semaphore
) -> Callable[[], None]:
    """Called by ``deliver`` once ``m`` is durable: write its reply, free its slot."""

    def ack() -> None:
        inflight.release()
        if m.reply is not None and m.reason is None and not writer.is_closing():
            writer.write(m.reply())

    return ack

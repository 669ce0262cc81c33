"""What every ingest connector shares: micro-batching, the durable-ack rule, dead letters.

Each protocol (``connectors.mqtt``; SL 651, HJ 212 and NB-IoT next) turns what its
senders send into ``Inbound`` messages, puts them into a ``MicroBatcher`` from whatever
thread its library calls back on, and hands each batch to ``deliver`` with its own
``decode``. ``deliver`` keeps the rules every connector must keep:

* **Acknowledge only after a durable append.** A message is acknowledged to its sender
  (``Inbound.ack``) only once its readings, or its dead-letter record, are durable:
  ``produce`` and ``dead_letter`` resolve only then. A crash before the ack means the
  sender sends again; the kernels skip a reading they have already counted.
* **Bad input never stops the stream.** Whatever goes wrong with one message (the
  ``PayloadError`` its decoder raises with the reason, or any other exception)
  dead-letters it with the reason and its raw bytes; the rest of the batch goes on.
* **Bounded input.** A message over ``max_payload_bytes`` is not decoded: it is
  dead-lettered with its first ``KEPT_BYTES`` bytes and its length in the reason (ten
  10 MB garbage payloads once filled a gateway's disk, kept whole as dead letters).
* **At most once is the sender's choice.** A message with no acknowledgement
  (``ack`` None: MQTT QoS 0, an unconfirmed datagram) is taken like any other and
  counted (``at_most_once``); what a crash loses of it, no one sends again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "KEPT_BYTES",
    "DeadLetter",
    "Inbound",
    "MicroBatcher",
    "PayloadError",
    "Produce",
    "Reading",
    "deliver",
]

log = logging.getLogger(__name__)

#: (station, metric, ts_ms, value in the metric's unit).
Reading = tuple[str, str, int, float]
#: ``produce(readings)`` / ``dead_letter(raw, reason, source)``: both resolve only once
#: the records are durable.
Produce = Callable[[list[Reading]], Awaitable[None]]
DeadLetter = Callable[[bytes, str, str], Awaitable[None]]

T = TypeVar("T")

#: How much of an oversized payload its dead letter keeps (bytes): enough to see what
#: sent it.
KEPT_BYTES = 1024


class PayloadError(ValueError):
    """A message that cannot become readings; the text is the dead-letter reason."""


@dataclass
class Inbound:
    """One message as its connector received it."""

    source: str  # where it came from (an MQTT topic, a station's address): dead letters say
    payload: bytes  # the raw bytes, kept whole for the dead-letter topic
    received_ms: int  # the gateway's clock when it arrived, ms UTC
    #: Acknowledges the message to its sender; None: sent at most once, never acknowledged.
    ack: Callable[[], None] | None


class MicroBatcher(Generic[T]):
    """Items put from any thread, taken on the event loop in batches: up to
    ``max_items``, waiting at most ``linger_ms`` for more after the first (batches, not
    messages: per-record overhead downstream dominates)."""

    def __init__(self, max_items: int, linger_ms: int) -> None:
        self.max_items = max_items
        self.linger_ms = linger_ms
        self._queue: asyncio.Queue[T] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that takes the batches; before the first ``put``."""
        self._loop = loop

    def put(self, item: T) -> None:
        """Thread-safe. After the loop has closed (shutting down) the item is dropped
        unacknowledged: its sender sends it again."""
        assert self._loop is not None, "put() before bind()"
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed
            log.info("message after shutdown left to its sender")

    async def next_batch(self) -> list[T]:
        """Wait for an item, then for more until the batch is full or ``linger_ms`` ends."""
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        # asyncio.timeout, not wait_for: in Python 3.11 a wait_for whose get completes
        # as the task is cancelled swallows the cancellation, and a stop hung.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(loop.time() + self.linger_ms / 1000):
                while len(batch) < self.max_items:
                    batch.append(await self._queue.get())
        return batch


async def deliver(
    messages: Sequence[Inbound],
    decode: Callable[[Inbound], list[Reading]],
    produce: Produce,
    dead_letter: DeadLetter,
    counters: Counter[str],
    max_payload_bytes: int | None = None,
) -> None:
    """Decode a batch, append its readings and dead letters durably, then acknowledge.

    ``decode`` raises ``PayloadError`` with the reason for a message that cannot become
    readings; any other exception is taken as a bug of the decoder and dead-letters
    that message too. A payload over ``max_payload_bytes`` is dead-lettered undecoded,
    cut to ``KEPT_BYTES``. Counts ``received``, ``at_most_once``, ``readings``,
    ``dead_letter``, ``oversized``. Raises only what ``produce`` or ``dead_letter`` raise (the log
    cannot be written): then nothing of the batch is acknowledged.
    """
    readings: list[Reading] = []
    dead: list[tuple[bytes, str, str]] = []
    for m in messages:
        counters["received"] += 1
        if m.ack is None:
            counters["at_most_once"] += 1
        size = len(m.payload)
        if max_payload_bytes is not None and size > max_payload_bytes:
            counters["oversized"] += 1
            reason = (
                f"payload of {size} bytes is over the {max_payload_bytes} allowed "
                f"(storage.max_payload_bytes); its first {min(size, KEPT_BYTES)} bytes are kept"
            )
            dead.append((m.payload[:KEPT_BYTES], reason, m.source))
            continue
        try:
            readings.extend(decode(m))
        except PayloadError as exc:
            dead.append((m.payload, str(exc), m.source))
        except Exception as exc:  # a case decode missed: this message, not the stream
            log.exception("ingest: unexpected error on a message from %s", m.source)
            dead.append((m.payload, f"ingest error: {type(exc).__name__}: {exc}", m.source))
    # Durable first (produce awaits the fsync), acknowledge after.
    if readings:
        await produce(readings)
    for raw, reason, source in dead:
        await dead_letter(raw, reason, source)
        counters["dead_letter"] += 1
    counters["readings"] += len(readings)
    for m in messages:
        if m.ack is not None:
            m.ack()

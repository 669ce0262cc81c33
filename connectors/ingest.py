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
* **One rule for what is plausible.** ``Admission`` dead-letters readings of a
  station the registry does not know, of a metric its station does not report, or
  stamped at a time no reading can have (before 2000, or further ahead of the gateway's
  clock than the configured skew), whatever the protocol. The engine's own clock check
  (QC, a few minutes ahead) is sensor health on readings that passed this.
* **At most once is the sender's choice.** A message with no acknowledgement
  (``ack`` None: MQTT QoS 0, an unconfirmed datagram) is taken like any other and
  counted (``at_most_once``); what a crash loses of it, no one sends again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from engine.contracts.batch import ReadingBlock

__all__ = [
    "EARLIEST_TS_MS",
    "KEPT_BYTES",
    "Admission",
    "DeadLetter",
    "Inbound",
    "MicroBatcher",
    "PayloadError",
    "Produce",
    "Reading",
    "Times",
    "Values",
    "deliver",
]

log = logging.getLogger(__name__)

#: (station, metric, ts_ms, value in the metric's unit[, quality]): the quality flag
#: (``engine.contracts.batch.Quality``) a protocol sends, UNCHECKED when absent.
Reading = tuple[str, str, int, float] | tuple[str, str, int, float, int]
#: ``produce(readings)`` / ``dead_letter(raw, reason, source)``: both resolve only once
#: the records are durable. A ``ReadingBlock`` is many readings of one sensor as columns.
Produce = Callable[[list[Reading | ReadingBlock]], Awaitable[None]]
DeadLetter = Callable[[bytes, str, str], Awaitable[None]]

T = TypeVar("T")

#: How much of an oversized payload its dead letter keeps (bytes): enough to see what
#: sent it.
KEPT_BYTES = 1024


class PayloadError(ValueError):
    """A message that cannot become readings; the text is the dead-letter reason."""


#: 2000-01-01T00:00:00Z in epoch ms: no telemetry Vigil takes is older (a ``ts`` of -5,
#: or 0, is a device that never set its clock, or seconds taken for milliseconds).
EARLIEST_TS_MS = 946_684_800_000

#: Station id -> the metrics its registry entry lists (an empty list: any metric); or
#: just the station ids.
Stations = Mapping[str, Collection[str]] | Collection[str]


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return "out of range"


class Times(list[int]):
    """Readings' times (epoch ms) with their earliest (``lo``) and latest (``hi``), as
    the decoder that built the list found them (``Admission.check_times`` then needs no
    pass over them); ``array``, when not None, the same times as an int64 NumPy array
    (``engine.runtime.batching`` takes it instead of the Python ints). A list: whatever
    takes a list of times takes it. Never changed after it is made (``lo``, ``hi`` and
    ``array`` would no longer say what it holds)."""

    __slots__ = ("array", "hi", "lo")

    def __init__(
        self, ts: list[int], lo: int, hi: int, array: npt.NDArray[np.int64] | None = None
    ) -> None:
        list.__init__(self, ts)  # not super(): a Python call less per message
        self.lo, self.hi, self.array = lo, hi, array


class Values(list[float]):
    """Readings' values with ``array``, the same values as a float64 NumPy array (see
    ``Times``). Never changed after it is made."""

    __slots__ = ("array",)

    def __init__(self, values: list[float], array: npt.NDArray[np.float64]) -> None:
        list.__init__(self, values)
        self.array = array


@dataclass(frozen=True)
class Admission:
    """Which readings a gateway takes (see the module doc); ``max_ahead_ms``: how far a
    reading's time may be ahead of the gateway's clock when it arrives. A connector
    calls ``check_sensor`` once it knows the station and metric, ``check_time`` for
    each reading; each raises ``PayloadError`` with the reason."""

    max_ahead_ms: int = 86_400_000
    earliest_ms: int = EARLIEST_TS_MS

    def check_sensor(self, station: str, metric: str, stations: Stations | None) -> None:
        """A station the registry knows (None: any), and a metric it reports."""
        if stations is None:
            return
        if station not in stations:
            raise PayloadError(f"unknown station {station!r}")
        metrics = stations[station] if isinstance(stations, Mapping) else ()
        if metrics and metric not in metrics:
            raise PayloadError(
                f"unknown metric {metric!r}: station {station} reports "
                f"{', '.join(sorted(metrics))} (its registry entry)"
            )

    def check_times(self, ts: Sequence[int], received_ms: int) -> None:
        """``check_time`` of each, at the cost of a ``min`` and a ``max`` when all pass
        (none when ``ts`` is a ``Times``: its decoder found them)."""
        if not ts:
            return
        lo, hi = (ts.lo, ts.hi) if isinstance(ts, Times) else (min(ts), max(ts))
        if lo < self.earliest_ms or hi > received_ms + self.max_ahead_ms:
            for t in ts:
                self.check_time(t, received_ms)

    def check_time(self, ts: int, received_ms: int) -> None:
        """A reading time after 2000 and at most ``max_ahead_ms`` past its arrival."""
        if ts < self.earliest_ms:
            raise PayloadError(
                f"ts {ts} ({_iso(ts)}) is before {_iso(self.earliest_ms)}: "
                "not a time a reading can have (is the device's clock set?)"
            )
        if ts > received_ms + self.max_ahead_ms:
            raise PayloadError(
                f"ts {ts} ({_iso(ts)}) is more than {self.max_ahead_ms // 1000} s ahead of "
                f"the gateway's clock ({_iso(received_ms)}; ingest.max_clock_skew_s)"
            )


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
    messages: per-record overhead downstream dominates).

    No asyncio work per item: ``put`` appends to a list under a lock and wakes the loop
    only when the list was empty (a batch begins) or has just filled a batch, so the
    loop is woken once or twice per batch however many items come (a wake-up per
    message cost more CPU than the MQTT client library's own work on the message).
    """

    def __init__(self, max_items: int, linger_ms: int) -> None:
        self.max_items = max_items
        self.linger_ms = linger_ms
        self._items: list[T] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None  # set once items wait
        self._full: asyncio.Event | None = None  # set once a batch's worth waits

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that takes the batches; before the first ``put``."""
        self._loop = loop
        self._ready = asyncio.Event()
        self._full = asyncio.Event()

    def put(self, item: T) -> None:
        """Thread-safe. After the loop has closed (shutting down) the item is dropped
        unacknowledged: its sender sends it again."""
        assert self._loop is not None, "put() before bind()"
        with self._lock:
            self._items.append(item)
            n = len(self._items)
        if n == 1 or n == self.max_items:
            event = self._ready if n == 1 else self._full
            assert event is not None  # bound with the loop
            try:
                self._loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closed
                log.info("message after shutdown left to its sender")

    def remove(self, unwanted: Callable[[T], bool]) -> int:
        """Take the ``unwanted`` items out of those waiting (not yet in a batch);
        returns how many. Thread-safe."""
        with self._lock:
            kept = [item for item in self._items if not unwanted(item)]
            removed = len(self._items) - len(kept)
            self._items[:] = kept
        return removed

    async def next_batch(self) -> list[T]:
        """Wait for an item, then for more until the batch is full or ``linger_ms`` ends."""
        ready, full = self._ready, self._full
        assert ready is not None and full is not None, "next_batch() before bind()"
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._items:
                    break
                ready.clear()  # under the lock: a put after this sets it again
            await ready.wait()
        full.clear()  # before the count: a batch filled after it sets it again
        with self._lock:
            waiting = len(self._items) < self.max_items
        if waiting and self.linger_ms > 0:
            # asyncio.timeout, not wait_for: in Python 3.11 a wait_for whose wait
            # completes as the task is cancelled swallows the cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(loop.time() + self.linger_ms / 1000):
                    await full.wait()
        with self._lock:
            batch = self._items[: self.max_items]
            del self._items[: self.max_items]
        return batch


async def deliver(
    messages: Sequence[Inbound],
    decode: Callable[[Inbound], Sequence[Reading | ReadingBlock]],
    produce: Produce,
    dead_letter: DeadLetter,
    counters: Counter[str],
    max_payload_bytes: int | None = None,
    ack_batch: Callable[[list[Inbound]], None] | None = None,
) -> None:
    """Decode a batch, append its readings and dead letters durably, then acknowledge.

    ``decode`` raises ``PayloadError`` with the reason for a message that cannot become
    readings; any other exception is taken as a bug of the decoder and dead-letters
    that message too. A payload over ``max_payload_bytes`` is dead-lettered undecoded,
    cut to ``KEPT_BYTES``. Counts ``received``, ``at_most_once``, ``readings``,
    ``dead_letter``, ``oversized``. Raises only what ``produce`` or ``dead_letter``
    raise (the log cannot be written): then nothing of the batch is acknowledged.
    ``ack_batch``: acknowledges the messages that have an ``ack`` all at once, in place
    of calling each (MQTT: one wake-up of the client's thread for all the PUBACKs).
    """
    readings: list[Reading | ReadingBlock] = []
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
    counters["readings"] += sum(len(r) if isinstance(r, ReadingBlock) else 1 for r in readings)
    if ack_batch is not None:
        ack_batch([m for m in messages if m.ack is not None])
        return
    for m in messages:
        if m.ack is not None:
            m.ack()

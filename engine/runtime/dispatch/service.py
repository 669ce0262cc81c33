"""The dispatcher running in the gateway: alert events in, notifications out, durably.

``engine.dispatch.Dispatcher`` is pure logic; this wraps it with the wall clock, the
durable ``Outbox`` and the receivers. Contract (all calls on the event loop):

- ``receive(events)`` feeds alert events, every one of the alerts topic (the
  dispatcher's lifecycle drops a transition it has, so a replay after a restart
  changes nothing). Their offsets may be committed only after ``flush`` returned: the
  gateway awaits it before each commit (``LocalTransport.before_commit``).
- ``tick()`` (every ``tick_s``, and at once after ``receive`` took an event:
  ``run_forever``, so a ``group_wait: 0s`` route notifies without waiting for the
  next tick) asks the dispatcher what is due and stores the
  notifications *and* the state that produced them in one synced write, before any
  is attempted. So after a SIGKILL the restored state has exactly the notifications
  it made in the outbox: none is lost, none is made twice.
- Stores happen off the event loop: the state is taken and encoded on the loop (so it
  is the state of that moment; only the alerts changed since the last store, each
  under its own key, plus the groups, silences and rate windows), the synced write
  runs on one writer thread, in order; a store's notifications are queued for
  delivery, and an action or a flush returns, only once its write is done. The loop
  goes on meanwhile (readings, the API, deliveries): a disk flush no longer stalls the
  gateway. A failed write raises, and what it held goes in the next one.
- One delivery loop per receiver sends its pending entries strictly in order; an
  entry is marked done when the receiver confirmed it. A retryable failure is
  retried (exponential backoff from ``retry_initial_s`` to ``retry_max_s``, waited
  with ``sleep``: tests pass one that moves a manual clock), the same entry first,
  however long the receiver is away; a permanent one is parked, logged and listed
  (``GET /api/outbox``), and the loop goes on. Delivery is at least once (a crash
  between a receiver's confirmation and the mark sends that entry again); the entry's
  key lets the receiving side drop the repeat.
- ``stop(delivery, drain_s)`` hands over in order: no send starts any more, the sends
  in flight get up to ``drain_s`` seconds to finish, and their marks go in the last
  store. Only a send still unfinished then (or a crash) is sent again after a restart.
- People's actions (``acknowledge``, ``close``, ``add_silence``, ``expire_silence``)
  are stored before they return.
- Alerts the dispatcher forgets (over, told, unchanged for ``forget_after_ms``) are
  appended to the store's history in the same write as the state that lost them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engine.contracts.alerts import AlertEvent
from engine.contracts.notification import DeliveryError, Receiver
from engine.dispatch.clock import Clock
from engine.dispatch.config import DispatchConfig
from engine.dispatch.dispatcher import FORGET_AFTER_MS, Dispatcher
from engine.dispatch.lifecycle import AlertState
from engine.dispatch.silences import Silence
from engine.runtime.dispatch.links import AckLinks
from engine.runtime.dispatch.outbox import Entry, Store

__all__ = ["DispatchService"]

log = logging.getLogger("vigil.dispatch")

#: Ticks between two stores of a state that produced nothing (the escalation clocks
#: of hidden alerts move every tick; a restart may lose at most this many ticks of it).
_IDLE_STORE_TICKS = 10


class DispatchService:
    def __init__(
        self,
        config: DispatchConfig,
        outbox: Store,
        receivers: Mapping[str, Receiver],
        clock: Clock,
        *,
        links: AckLinks | None = None,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        forget_after_ms: int = FORGET_AFTER_MS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.receivers = dict(receivers)
        self.clock = clock
        self.links = links
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._sleep = sleep
        self.counters: Counter[str] = Counter()
        url = links.url if links is not None else None
        snapshot = outbox.snapshot()
        self._forgotten: list[dict[str, Any]] = []
        kw: dict[str, Any] = {"forget_after_ms": forget_after_ms, "on_forget": self._forget}
        self.dispatcher = (
            Dispatcher(config, clock, url, **kw)
            if snapshot is None
            else Dispatcher.restore(config, clock, snapshot, url, **kw)
        )
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="vigil-outbox")
        self._last_write: asyncio.Future[None] | None = None
        self._queues: dict[str, deque[Entry]] = {name: deque() for name in self.receivers}
        self._wake = {name: asyncio.Event() for name in self.receivers}
        pending = outbox.pending()
        for entry in pending:
            self._enqueue(entry)
        if pending:
            log.warning("outbox: %d notifications pending from before the restart", len(pending))
        self._dirty = False
        self._idle_ticks = 0
        self._poke = asyncio.Event()
        #: Set while the delivery loops may start sends; ``stop`` clears it.
        self._open = asyncio.Event()
        self._open.set()
        #: Sends in flight, and set while there are none.
        self._sending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: Bumped after every stored change; the console's live stream waits on it.
        self.version = 0
        self._changed = asyncio.Event()

    # ---- inputs ----------------------------------------------------------------------

    def receive(self, events: Iterable[AlertEvent]) -> None:
        for event in events:
            if self.dispatcher.receive(event):
                self._dirty = True
                self.counters["events"] += 1
                self._poke.set()

    async def run_forever(self, tick_s: float) -> None:
        """The ticks and the receivers' delivery loops, for the life of the service. If
        one fails, the others are cancelled and its exception raised: no delivery loop
        outlives a failed service (a fenced Kafka owner's would go on sending)."""
        await _together(self._tick_forever(tick_s), self.deliver_forever())

    async def _tick_forever(self, tick_s: float) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), tick_s)
            self._poke.clear()
            await self.tick()

    async def tick(self) -> None:
        """Store and queue what is due now (call every second)."""
        notifications = self.dispatcher.tick()
        self._idle_ticks += 1
        if notifications or self._dirty or self._forgotten or self._idle_ticks >= _IDLE_STORE_TICKS:
            for entry in await self._store(notifications):
                self._enqueue(entry)

    async def flush(self) -> None:
        """Return once every event received so far is in the stored state (before the
        alerts' offsets are committed)."""
        if self._dirty:
            await self._store(())
        elif self._last_write is not None:
            await asyncio.shield(self._last_write)

    def _forget(self, state: AlertState) -> None:
        self._forgotten.append(state.to_dict())

    async def _store(self, notifications: Sequence[Any]) -> list[Entry]:
        # Snapshot and encode now, on the loop: the write holds the state of this moment
        # however long the disk takes; what changes meanwhile marks the state dirty again.
        history, self._forgotten = self._forgotten, []
        rest, changed, removed = self.dispatcher.changes()
        prepared = self.outbox.prepare(
            rest, notifications, history, alerts=changed, removed=removed
        )
        self._dirty, self._idle_ticks = False, 0
        write = self._write(prepared)
        self._last_write = write
        try:
            await asyncio.shield(write)  # a cancelled caller must not leave it half-known
        except asyncio.CancelledError:
            raise  # the write goes on and lands; only this caller stops waiting
        except Exception:
            # Not stored. The state (and the notifications of a tick, which the state
            # says were made) is then only in memory: what was taken goes in the next
            # write again, and the error propagates (a failed tick stops the service:
            # the restart continues from the last stored state, where they were not).
            self.dispatcher.unstored(changed, removed)
            self._forgotten[:0] = history
            self._dirty = True
            raise
        self.counters["notifications"] += len(prepared.entries)
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        return prepared.entries

    async def changed_since(self, version: int, timeout_s: float) -> int:
        """The state's version once it differs from ``version`` (or after ``timeout_s``
        seconds, whichever is first): what a live view waits on before it reads again."""
        if self.version == version:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self.version

    def _write(self, prepared: Any) -> asyncio.Future[None]:
        """Start the durable write of ``prepared``; writes land in the order started.
        Here the synced RocksDB write on the one writer thread; the Kafka runtime's
        store commits a transaction instead (``engine.runtime.dispatch.kafka_service``)."""
        return asyncio.get_running_loop().run_in_executor(self._writer, self.outbox.write, prepared)

    def _enqueue(self, entry: Entry) -> None:
        queue = self._queues.get(entry.notification.receiver)
        if queue is None:  # the routing file no longer has it
            error = f"receiver {entry.notification.receiver!r} is no longer configured"
            self.outbox.park(entry, error, self.clock.now_ms())
            log.error("outbox: %s: parked %s", error, entry.notification.key)
            return
        queue.append(entry)
        self._wake[entry.notification.receiver].set()

    # ---- people's actions --------------------------------------------------------------

    async def acknowledge(self, fingerprint: str, by: str, note: str = "") -> AlertState:
        state = self.dispatcher.acknowledge(fingerprint, by, note)
        await self._store(())
        log.warning("alert %s acknowledged by %s", fingerprint, by)
        return state

    async def close(self, fingerprint: str, by: str, feedback: str) -> AlertState:
        state = self.dispatcher.close(fingerprint, by, feedback)
        await self._store(())
        log.warning("alert %s closed by %s", fingerprint, by)
        return state

    async def add_silence(
        self, matchers: list[str], starts_at: int, ends_at: int, author: str, comment: str
    ) -> Silence:
        silence = self.dispatcher.add_silence(matchers, starts_at, ends_at, author, comment)
        await self._store(())
        return silence

    async def expire_silence(self, silence_id: str) -> Silence:
        silence = self.dispatcher.expire_silence(silence_id)
        await self._store(())
        return silence

    # ---- delivery ----------------------------------------------------------------------

    def pending(self) -> dict[str, int]:
        """Receiver -> notifications waiting for it."""
        return {name: len(q) for name, q in self._queues.items()}

    async def deliver_forever(self) -> None:
        """The receivers' delivery loops, for the life of the process (one that raises,
        ``may_send``'s refusal, cancels the others)."""
        await _together(*(self._deliver(name) for name in self.receivers))

    async def may_send(self) -> None:
        """Called before each attempt: raises if this service may not send any more.
        The gateway's always may (one process owns its store); a Kafka owner checks
        that it still owns the dispatcher after standing still."""

    async def _deliver(self, name: str) -> None:
        receiver, queue, wake = self.receivers[name], self._queues[name], self._wake[name]
        delay = self.retry_initial_s
        while True:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            entry = queue[0]
            key = entry.notification.key
            await self.may_send()  # outside the try: a refusal stops the service
            await self._open.wait()  # stopping: no new send (until the loop is cancelled)
            self._sending += 1
            self._idle.clear()
            try:
                await receiver.send(entry.notification)
            except DeliveryError as exc:
                if not exc.retryable:
                    queue.popleft()
                    self.outbox.park(entry, str(exc), self.clock.now_ms())
                    self.counters["parked"] += 1
                    log.error("outbox: %s refused for good, parked: %s", key, exc)
                    continue
                log.warning("outbox: %s not delivered (%s); again in %.1fs", key, exc, delay)
            except Exception:  # a receiver's bug must not lose the entry: keep trying
                log.exception("outbox: %s: unexpected error; again in %.1fs", key, delay)
            else:
                queue.popleft()
                self.outbox.done(entry, self.clock.now_ms())
                self.counters["delivered"] += 1
                delay = self.retry_initial_s
                continue
            finally:  # after the mark: ``stop`` then stores it
                self._sending -= 1
                if not self._sending:
                    self._idle.set()
            self.counters["retries"] += 1
            await self._sleep(delay)
            delay = min(delay * 2, self.retry_max_s)

    async def stop(self, delivery: asyncio.Task[None] | None, drain_s: float = 0.0) -> None:
        """Stop delivering, store the state, close the receivers. No send starts any
        more; the sends in flight get up to ``drain_s`` seconds to finish (their marks
        go in this store); one still unfinished then is cancelled and stays pending: it
        goes again after the restart, same key. The outbox stays open: the last offset
        commit still calls ``flush``; RocksDB's synced WAL needs no close to be durable."""
        self._open.clear()
        if drain_s > 0 and delivery is not None and not delivery.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), drain_s)
        if delivery is not None and not delivery.done():
            delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivery
        await self.flush()
        for receiver in self.receivers.values():
            try:
                await receiver.aclose()
            except Exception:
                log.exception("receiver %s did not close cleanly", receiver.name)


async def _together(*coros: Coroutine[Any, Any, None]) -> None:
    """Run ``coros`` until the first raises (or is cancelled): then cancel the rest and
    raise its exception. ``asyncio.gather`` would leave the others running."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:  # no receivers
        return
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

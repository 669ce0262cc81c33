"""The order of the pool's appends (``connectors.mqtt.pool``): the backlogs its
workers catch up on merged in time order, the one writer's appends in the order
decided, and the answer to each batch once all of it is durable.

Order: the broker spreads a station's messages over the workers (mosquitto 2: round
robin), so the log may hold a station's readings out of arrival order across batches;
the kernels take out-of-order readings within the topology's lateness (README: "Several
ingest processes"). That holds for live traffic, not for a backlog: while the gateway
is down (a power cut, a stop) the broker goes on giving each worker's session its share
of the messages, and the workers, started again, would each take theirs at its own
pace, a station's readings hours of event time apart in the log. So a worker's batches
of the backlog its session held (``MqttIngest.catching_up``: up to the mark it puts
behind it) are merged in time order (``_merge``), and the batches of a worker that has
caught up wait until none catches up (they are newer). A worker that exits stops being
waited for.

Contracts: a batch is answered (``done`` to its worker) only once every reading of it
is appended and durable; appends run one at a time, in the order ``_merge`` decided
them; once one append failed, nothing that waits is answered as durable.
``BacklogMerge`` is a base of ``MqttIngestPool``: it reads the pool's workers
(``_views``), its ``stop`` (``_stopping``), its writer (``_produce``), its failure
(``_fail``) and this bookkeeping's state (declared below), which
``MqttIngestPool.__init__`` sets.
"""

from __future__ import annotations

import asyncio
import logging

from connectors.ingest import Produce, Reading
from connectors.mqtt import pool_merge
from connectors.mqtt.connection import set_done
from connectors.mqtt.pool_worker import WorkerView
from engine.contracts.batch import ReadingBlock

__all__ = ["CATCH_UP_WAIT_S", "BacklogMerge"]

# The pool's logger: what is said here reads as the pool's, as before the split.
log = logging.getLogger("connectors.mqtt.pool")

#: How long the others' batches wait for a worker that is catching up and has sent no
#: batch (s): one whose mark never comes back (a subscription the broker's ACLs refuse),
#: or one starting again after it died, is waited for this long at most, not for ever.
CATCH_UP_WAIT_S = 5.0


class BacklogMerge:
    """The merged, ordered appends of ``MqttIngestPool`` (a base of it; see the module)."""

    # ``MqttIngestPool``'s, set by its ``__init__`` and read here.
    _stopping: bool
    _produce: Produce
    _appends: set[asyncio.Task[None]]
    _append_lock: asyncio.Lock
    _append_failed: BaseException | None

    def _views(self) -> list[WorkerView]:
        raise NotImplementedError

    def _fail(self, exc: BaseException) -> None:
        raise NotImplementedError

    def _merge(self) -> None:
        """Append what can go of the batches that wait, and answer each batch once all
        of it is durable (``_append``, one at a time, in order). While workers catch up,
        and each has a batch waiting: their readings up to the oldest of those
        batches' newest times, each sensor's in time order (the worker of that batch is
        then answered and sends its next; a worker's backlog comes in the order it was
        published, so none of the others holds anything older). The batches of workers
        that have caught up (newer than any backlog) wait until none catches up; then,
        or once ``stop`` began, all that waits goes. A catching-up worker with no batch
        is waited for ``CATCH_UP_WAIT_S`` at most (``_waited_for``; the watchdog's ticks
        merge again). Once an append failed, nothing that waits is answered."""
        if not any(w.pending is not None for w in self._views()):
            return  # nothing waits
        if self._append_failed is not None:  # none of what waits is answered as durable
            for w in self._views():
                if w.pending is not None:
                    _cols, done = w.pending
                    w.pending = None
                    if not done.done():
                        done.set_exception(self._append_failed)
            return
        now = asyncio.get_running_loop().time()
        catching = [w for w in self._views() if w.catching_up and self._waited_for(w, now)]
        if self._stopping or not catching:
            waiting, upto = [w for w in self._views() if w.pending is not None], None
        elif all(w.pending for w in catching):
            waiting = catching
            upto = min(pool_merge.newest(w.pending[0]) for w in catching if w.pending)
        else:
            return
        if not waiting:
            return
        parts, answered = [], []
        for w in waiting:
            assert w.pending is not None
            cols, done = w.pending
            parts.append(pool_merge.take(cols, upto) if upto is not None else cols)
            if upto is None or not cols:
                answered.append(done)
                w.pending = None
        task = asyncio.ensure_future(self._append(pool_merge.blocks(parts), answered))
        self._appends.add(task)
        task.add_done_callback(self._appends.discard)

    async def _append(
        self, blocks: list[ReadingBlock], answered: list[asyncio.Future[None]]
    ) -> None:
        """Append ``blocks`` after the appends before it, then resolve ``answered``
        (or fail them as the append failed)."""
        readings: list[Reading | ReadingBlock] = [*blocks]
        try:
            async with self._append_lock:
                if self._append_failed is not None:
                    # An append decided before this one failed: a batch partly in it
                    # and partly here must not be answered as durable by this one.
                    raise self._append_failed
                if readings:
                    await self._produce(readings)
        except Exception as exc:
            # A batch partly in this append and partly still waiting must not be
            # answered by a later append: nothing is from now on (``_merge`` fails
            # what waits), and the gateway stops, whoever was answered here.
            self._append_failed = self._append_failed or exc
            for done in answered:
                if not done.done():
                    done.set_exception(exc)
            self._merge()
            self._fail(exc)
            return
        for done in answered:
            set_done(done)

    def _waited_for(self, w: WorkerView, now: float) -> bool:
        """Whether the others' batches wait for catching-up worker ``w``: not if it
        cannot connect, nor once it has sent no batch for ``CATCH_UP_WAIT_S`` (said
        once per catch-up)."""
        if _unreachable(w):
            return False
        if w.pending is not None or now - w.last_batch_at < CATCH_UP_WAIT_S:
            w.not_waited = False
            return True
        if not w.not_waited:
            w.not_waited = True
            log.warning(
                "MQTT ingest worker %d catches up with no batch for %.0f s: the others' "
                "batches no longer wait for it",
                w.index,
                CATCH_UP_WAIT_S,
            )
        return False


def _unreachable(w: WorkerView) -> bool:
    """Worker ``w`` reports that it cannot connect (the broker refuses its client id, or
    cannot be reached): the others' batches do not wait for its backlog."""
    return w.reported and not w.connection.connected and w.connection.failures > 0

"""The pool's time-ordered appends (``connectors.mqtt.pool``): the live merge of the
workers' batches and the merge of the backlogs they catch up on, the one writer's
appends in the order decided, and the answer to each batch once all of it is durable.

Order: the broker spreads a station's messages over the workers (mosquitto 2: round
robin), so a device's upload of buffered readings and its next live reading go to
different workers. Live batches are held here (``WorkerView.live``) and appended in the
order their messages were received (``_merge_live``): each worker says up to when it
has handed on what it received (``MqttIngest.received_upto``, with each batch and every
``NOTICE_S``), and the readings received up to the oldest of those go in one block,
each sensor's in time order (``pool_merge.merged``); a batch is answered once all of it
is appended. A worker that has said nothing for ``LIVE_WAIT_S`` (stopped, hung, gone:
found by a timer, in two steps, ``_check_quiet``) is not waited for; what reaches
the log out of order then, the kernels take within the topology's lateness (README:
"Several ingest processes"). That holds for live traffic, not for a backlog: while the gateway
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

``LiveMerge`` is a base of ``MqttIngestPool``: it holds this bookkeeping's state
(``_init_merge``) and reads the pool's workers (``_views``), its ``stop``
(``_stopping``), its writer (``_produce``) and its failure (``_fail``).
"""

from __future__ import annotations

import asyncio
import logging

from connectors.ingest import Produce, Reading
from connectors.mqtt import pool_merge
from connectors.mqtt.connection import set_done
from connectors.mqtt.pool_worker import WorkerView
from connectors.mqtt.worker import NOTICE_S
from engine.contracts.batch import ReadingBlock

__all__ = ["CATCH_UP_WAIT_S", "LIVE_WAIT_S", "LiveMerge"]

# The pool's logger: what the merge says reads as the pool's, as before the split.
log = logging.getLogger("connectors.mqtt.pool")

#: How long the others' batches wait for a worker that is catching up and has sent no
#: batch (s): one whose mark never comes back (a subscription the broker's ACLs refuse),
#: or one starting again after it died, is waited for this long at most, not for ever.
CATCH_UP_WAIT_S = 5.0
#: How long the live merge waits on a worker that sends nothing (s; from its start
#: for its first word): its ``upto`` comes every ``NOTICE_S`` (20 ms); one stopped,
#: hung or gone holds the others' readings back this long (and ``2 * NOTICE_S``).
LIVE_WAIT_S = 0.25


class LiveMerge:
    """The merged appends of ``MqttIngestPool`` (a base of it; see the module)."""

    # The pool's, read here.
    _stopping: bool
    _produce: Produce

    def _views(self) -> list[WorkerView]:
        raise NotImplementedError

    def _fail(self, exc: BaseException) -> None:
        raise NotImplementedError

    def _init_merge(self) -> None:
        """This bookkeeping's state, nothing waiting."""
        self._appends: set[asyncio.Task[None]] = set()  # merged appends under way
        self._append_lock = asyncio.Lock()  # appends in the order they were decided
        #: A merged append failed: nothing that waits is answered from then on.
        self._append_failed: BaseException | None = None
        #: ``_merge_live`` 's next merge, when a quiet worker stops being waited for.
        self._merge_timer: asyncio.TimerHandle | None = None
        #: When ``_check_quiet`` last looked (loop time, s).
        self._quiet_at = 0.0

    def _answer(
        self, w: WorkerView, writer: asyncio.StreamWriter | None, done: asyncio.Future[None]
    ) -> None:
        """Worker ``w`` 's live batch is appended (``done``): ``done`` to it, if it is
        still the process that sent it (``writer``: not one started again since); its
        append failed: the gateway stops, as ``_run`` stops it."""
        if done.cancelled():  # the worker died before: its messages come again
            return
        exc = done.exception()
        if exc is None:
            if w.writer is writer:
                w.send("done")
            return
        log.error("MQTT ingest worker %d: %r; the gateway stops", w.index, exc)
        self._fail(exc)

    def _upto(self, w: WorkerView, upto: int) -> None:
        """Worker ``w`` has handed on everything it received before ``upto`` (epoch ms:
        ``MqttIngest.received_upto``)."""
        if not w.killed:  # sent before it was taken for hung: its successor's count
            w.upto = upto if w.upto is None else max(w.upto, upto)
            w.upto_at = asyncio.get_running_loop().time()

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
        views = self._views()
        if not any(w.pending is not None or w.live is not None for w in views):
            return  # nothing waits
        if self._append_failed is not None:  # none of what waits is answered as durable
            for w in views:
                for _held, done in filter(None, (w.pending, w.live)):
                    if not done.done():
                        done.set_exception(self._append_failed)
                w.pending = w.live = None
            return
        now = asyncio.get_running_loop().time()
        catching = [w for w in views if w.catching_up and self._waited_for(w, now)]
        if self._stopping or not catching:
            waiting, upto = [w for w in views if w.pending is not None], None
        elif all(w.pending for w in catching):
            waiting = catching
            upto = min(pool_merge.newest(w.pending[0]) for w in catching if w.pending)
        else:
            return
        if waiting:
            self._merge_backlogs(waiting, upto)
        if self._stopping or not catching:
            self._merge_live(now)

    def _merge_backlogs(self, waiting: list[WorkerView], upto: int | None) -> None:
        """``_merge`` 's append of the backlog batches of ``waiting``: their readings
        up to ``upto`` (epoch ms; None: all)."""
        parts, answered = [], []
        for w in waiting:
            assert w.pending is not None
            cols, done = w.pending
            parts.append(pool_merge.take(cols, upto) if upto is not None else cols)
            if upto is None or not cols:
                answered.append(done)
                w.pending = None
        self._append_soon(pool_merge.blocks(parts), answered)

    def _merge_live(self, now: float) -> None:
        """``_merge`` 's append of the live batches that wait: the readings received up
        to the oldest ``upto`` of the workers waited for (``_live_waited``), in time
        order; a batch is answered once all of it is appended. Then, if some wait, a
        merge again when the first of the quiet workers stops being waited for."""
        views = self._views()
        held = [w for w in views if w.live is not None]
        if not held:
            return
        # Stopping, or nobody to wait on: all of it. One waited for that has said
        # nothing yet (starting, or its frames not read yet): none of it.
        uptos = [w.upto for w in views if self._live_waited(w)]
        upto = None
        if not self._stopping and uptos:
            known = [t for t in uptos if t is not None]
            upto = min(known) if len(known) == len(uptos) else -1
        parts: list[pool_merge.Sensors | pool_merge.Rows] = []
        answered = []
        for w in held:
            assert w.live is not None
            batch, done = w.live
            part = batch.take(upto)
            if part is not None:
                parts.append(part)
            if batch.empty:
                answered.append(done)
                w.live = None
        if parts:
            self._append_soon(pool_merge.merged(parts), answered)
        if self._merge_timer is not None:
            self._merge_timer.cancel()
            self._merge_timer = None
        quiet = [w.upto_at for w in views if self._live_waited(w)]
        if quiet and any(w.live is not None for w in views):
            loop = asyncio.get_running_loop()
            due = max(now, min(quiet) + LIVE_WAIT_S)
            self._merge_timer = loop.call_at(due, self._check_quiet, True)

    def _check_quiet(self, first: bool) -> None:
        """``_merge_live`` 's timer: the workers quiet now are no longer waited for
        (``_live_waited``), then merge. In two steps, ``2 * NOTICE_S`` apart: frames
        that came while this loop was held up (a long evaluation) are read first."""
        loop = asyncio.get_running_loop()
        if first:
            self._merge_timer = loop.call_later(2 * NOTICE_S, self._check_quiet, False)
            return
        self._merge_timer = None
        self._quiet_at = loop.time()
        self._merge()

    def _live_waited(self, w: WorkerView) -> bool:
        """Whether the live merge waits on worker ``w`` 's ``upto``: if it runs and has
        sent one, or started, since ``LIVE_WAIT_S`` before the last check
        (``_check_quiet``): a worker stopped, hung or gone holds nobody's readings back
        longer than that; an ``upto`` it sends makes it waited for again."""
        alive = w.writer is not None and not w.killed
        return alive and w.upto_at + LIVE_WAIT_S > self._quiet_at

    def _append_soon(
        self, blocks: list[ReadingBlock], answered: list[asyncio.Future[None]]
    ) -> None:
        """``_append`` in a task of its own (``_appends``), in the order decided."""
        task = asyncio.ensure_future(self._append(blocks, answered))
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
                if readings:
                    await self._produce(readings)
        except Exception as exc:  # raised by each waiting ``_handle``: the gateway stops
            # A batch partly in this append and partly still waiting must not be
            # answered by a later append: ``_merge`` fails what waits from now on.
            self._append_failed = exc
            for done in answered:
                if not done.done():
                    done.set_exception(exc)
            self._merge()
            return
        for done in answered:
            set_done(done)

    def _waited_for(self, w: WorkerView, now: float) -> bool:
        """Whether the others' batches wait for catching-up worker ``w``: not if it
        cannot connect, nor once it has sent no batch for ``CATCH_UP_WAIT_S`` (said
        once per catch-up)."""
        if _unreachable(w):
            return False
        if not w.reported:  # still starting (``START_TIMEOUT_S`` at most)
            return True
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

"""MQTT ingest on several cores: N worker processes share the subscription, the gateway
process writes the log.

``MqttIngestPool`` has ``MqttIngest``'s interface (``start``, ``join``, ``stop``,
``pause``, ``resume``, ``state``, ``connection``, ``counters``, ``known_stations``) for
``MqttOptions.processes`` > 1. It starts that many ``connectors.mqtt.worker`` processes;
worker ``k`` is an MQTT client ``<client_id>-<k>`` with a persistent session (MQTT
3.1.1, or 5 with ``MqttOptions.mqtt5``) in the shared subscription
``$share/<group>/<filter>`` (group: the gateway's client id), so the broker hands each
message to one worker. A worker does what costs CPU per message (the client library's
socket reads, decoding, admission, batching) and sends each batch's readings and dead
letters here over a socket pair; this process, the embedded log's only writer, appends
them (``produce``, ``dead_letter``: both resolve once durable) and answers ``done``; only
then does the worker acknowledge the batch's messages (PUBACK). Nothing acknowledged is
lost: a crash on either side before the answer leaves the messages unacknowledged in the
worker's persistent session, and the broker delivers them again to the next worker with
that client id.

A worker that dies is never silent: it is logged at ERROR, counted
(``counters["worker_restarts"]``) and started again with the same client id, which
takes over its session (and its unacknowledged messages). A worker that dies before it
ever subscribed (its settings, its code) is not restarted: ``join`` raises, and the
gateway exits for its supervisor. So does a failed append (the log cannot be written).

A worker that hangs is found: one that has sent nothing for ``SILENT_REPORTS``
report periods (``REPORT_S`` each: 2.5 s in all) while this side was not busy with its request
(SIGSTOP, a deadlock; a worker reports even while idle) is logged at ERROR, counted
(``counters["worker_hangs"]``), no longer counts as subscribed (``state``, ``/readyz``)
and is killed, then started again like a worker that died: within about 4 s plus its
restart. A worker that has not reported ``START_TIMEOUT_S`` after its start is killed
too. Periods in which this process's own event loop was held up (a tick late by more
than a period) are not counted against a worker.

``stop``: every worker stops as ``MqttIngest.stop`` does, this process answering its
batch in hand meanwhile: written here, acknowledged, and read by the broker before the
worker disconnects (the fence), so nothing appended here is delivered again after a
restart. A worker that has not exited within ``STOP_TIMEOUT_S`` is killed.

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
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any

from connectors.ingest import Admission, DeadLetter, Produce, Reading, Stations
from connectors.mqtt import pool_merge
from connectors.mqtt.client import STOP_TIMEOUT_S as INGEST_STOP_TIMEOUT_S
from connectors.mqtt.client import BrokerDrops, MqttIngest, Sequences
from connectors.mqtt.connection import Connection, set_done
from connectors.mqtt.options import MqttOptions
from connectors.mqtt.pool_worker import WorkerView
from connectors.mqtt.topics import TopicTemplate
from connectors.mqtt.worker import NOTICE_S, REPORT_S, read_frame
from engine.contracts.batch import ReadingBlock

__all__ = ["Ingest", "MqttIngestPool", "mqtt_ingest"]

log = logging.getLogger(__name__)

#: How long the workers may take to stop before they are killed (seconds): their own
#: bound (the batch in hand, the fence) and a margin to exit.
STOP_TIMEOUT_S = INGEST_STOP_TIMEOUT_S + 5.0
#: Wait before a dead worker is started again (seconds).
RESTART_DELAY_S = 1.0
#: How long the others' batches wait for a worker that is catching up and has sent no
#: batch (s): one whose mark never comes back (a subscription the broker's ACLs refuse),
#: or one starting again after it died, is waited for this long at most, not for ever.
CATCH_UP_WAIT_S = 5.0
#: How long the live merge waits on a worker that sends nothing (s; from its start
#: for its first word): its ``upto`` comes every ``NOTICE_S`` (20 ms); one stopped,
#: hung or gone holds the others' readings back this long (and ``2 * NOTICE_S``).
LIVE_WAIT_S = 0.25
#: Tries to end a session a worker no longer configured still has (a retiring worker
#: that died is started again this many times in all).
RETIRE_ATTEMPTS = 3


class MqttIngestPool:
    """``MqttIngest``'s interface over ``options.processes`` worker processes."""

    def __init__(
        self,
        options: MqttOptions,
        produce: Produce,
        dead_letter: DeadLetter,
        known_stations: Stations | None = None,
        on_broker_drops: BrokerDrops | None = None,
        admission: Admission | None = None,
        on_sequence: Sequences | None = None,
    ) -> None:
        self.options = options
        self.template = TopicTemplate(options.topic_template)
        group = re.sub(r"[^A-Za-z0-9_.-]", "_", options.client_id)  # no / + # in a group
        self.subscription = f"$share/{group}/{self.template.subscription}"
        self._produce = produce
        self._dead_letter = dead_letter
        self._on_broker_drops = on_broker_drops
        self._on_sequence = on_sequence
        self._known_stations = known_stations
        self.admission = admission or Admission()
        self.subscribed = threading.Event()
        self._paused: str | None = None
        self._retired: Counter[str] = Counter()  # counts of workers that died
        self._group = group
        self._workers = [self._view(k) for k in range(options.processes)]
        #: Workers of client ids ``<client_id>-<k>``, k >= processes, whose sessions the
        #: broker still has (``processes`` was higher): each takes what its session
        #: holds and ends it (``MqttOptions.retire``); never started again.
        self._retiring: list[WorkerView] = []
        self._failed: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._appends: set[asyncio.Task[None]] = set()  # merged appends under way
        self._append_lock = asyncio.Lock()  # appends in the order they were decided
        #: A merged append failed: nothing that waits is answered from then on.
        self._append_failed: BaseException | None = None
        #: ``_merge_live`` 's next merge, when a quiet worker stops being waited for.
        self._merge_timer: asyncio.TimerHandle | None = None
        #: When ``_check_quiet`` last looked (loop time, s).
        self._quiet_at = 0.0
        self._stopping = False

    def _view(self, k: int, *, retire: bool = False) -> WorkerView:
        return WorkerView(
            k,
            dataclasses.replace(
                self.options,
                client_id=f"{self.options.client_id}-{k}",
                share_group=self._group,
                processes=1,
                # One follower of the broker's drop count is enough.
                broker_drops_topic=self.options.broker_drops_topic if k == 0 else None,
                catch_up_topic=f"vigil-ingest/{self._group}-{k}/catch-up",
                retire=retire,
            ),
        )

    def _views(self) -> list[WorkerView]:
        """Every worker process, retiring ones too."""
        return self._workers + self._retiring

    # ---- what the gateway reads ---------------------------------------------------------

    @property
    def known_stations(self) -> Stations | None:
        return self._known_stations

    @known_stations.setter
    def known_stations(self, stations: Stations | None) -> None:
        self._known_stations = stations
        for w in self._views():
            w.send("stations", stations)

    @property
    def counters(self) -> Counter[str]:
        """Every worker's counters summed, those of workers that died included."""
        total = Counter(self._retired)
        for w in self._views():
            total.update(w.counters)
        return total

    @property
    def connection(self) -> Connection:
        """Connected when every worker is; the first worker's error that is not."""
        ws = self._workers
        down = [w for w in ws if not w.connection.connected]
        return Connection(
            connected=not down,
            error=None if not down else f"worker {down[0].index}: {down[0].connection.error}",
            since_ms=max(w.connection.since_ms for w in ws),
            failures=sum(w.connection.failures for w in ws),
        )

    @property
    def state(self) -> str:
        """As ``MqttIngest.state``: ``subscribed`` once every worker is."""
        if self.subscribed.is_set():
            return "subscribed"
        return "connected" if self.connection.connected else "disconnected"

    @property
    def paused(self) -> bool:
        return self._paused is not None

    def pause(self, why: str) -> None:
        """As ``MqttIngest.pause``, in every worker."""
        if self._paused is not None:
            return
        self._paused = why
        log.error("MQTT ingest paused (%s): the broker keeps the messages until it resumes", why)
        for w in self._views():
            w.send("pause", why)

    def resume(self) -> None:
        if self._paused is None:
            return
        self._paused = None
        log.warning("MQTT ingest resumed")
        for w in self._views():
            w.send("resume")

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._failed = asyncio.get_running_loop().create_future()
        self._tasks = [asyncio.ensure_future(self._run(w)) for w in self._workers]
        self._tasks.append(asyncio.ensure_future(self._watch()))
        self._retire(self.options.processes)

    async def join(self) -> None:
        """Raises what failed (an append, a worker that could not start); shielded."""
        assert self._failed is not None, "join() before start()"
        await asyncio.shield(self._failed)

    async def stop(self) -> None:
        """Each worker leaves the broker as ``MqttIngest.stop`` does (its batch in hand
        written here, acknowledged and fenced; what it had not taken stays with the
        broker) and exits; those not exited within ``STOP_TIMEOUT_S`` are killed."""
        self._stopping = True
        self._merge()  # what waits for a worker's batch goes now
        if self._merge_timer is not None:
            self._merge_timer.cancel()
        for w in self._views():
            w.send("stop")
        running = {w: w.process for w in self._views() if w.process is not None}
        # Answered meanwhile by each worker's ``_serve``, still reading its frames.
        exits = [asyncio.ensure_future(p.wait()) for p in running.values()]
        if exits:
            await asyncio.wait(exits, timeout=STOP_TIMEOUT_S)
        for w, process in running.items():
            if process.returncode is None:
                log.error("MQTT ingest worker %d did not stop: killed", w.index)
                process.kill()
                await process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._failed is not None and not self._failed.done():
            self._failed.cancel()

    def _fail(self, exc: BaseException) -> None:
        assert self._failed is not None
        if not self._failed.done():
            self._failed.set_exception(exc)

    # ---- one worker ----------------------------------------------------------------------

    async def _run(self, w: WorkerView) -> None:
        """Runs worker ``w`` and starts it again whenever it dies, until ``stop``."""
        while not self._stopping:
            try:
                code = await self._serve(w)
            except Exception as exc:  # an append failed (or a start): the gateway must stop
                log.error("MQTT ingest worker %d: %r; the gateway stops", w.index, exc)
                self._fail(exc)
                return
            if self._stopping:
                return  # its counters stay, as its last report left them
            self._retired.update(w.counters)
            w.counters, w.subscribed = {}, False
            w.connection = Connection(error=f"worker exited with status {code}")
            self._update_subscribed()
            if not w.ever_subscribed:
                self._fail(RuntimeError(f"MQTT ingest worker {w.index} exited ({code}) at start"))
                return
            self._retired["worker_restarts"] += 1
            w.restarted = True
            log.error(
                "MQTT ingest worker %d exited with status %s: starting it again (the broker "
                "redelivers what it had not acknowledged)",
                w.index,
                code,
            )
            await asyncio.sleep(RESTART_DELAY_S)

    def _retire(self, k: int) -> None:
        """Start a retiring worker with client id ``<client_id>-<k>``: it tells whether
        the broker has that session (``_handle``: then ``k + 1`` is tried too)."""
        if self._stopping:
            return
        w = self._view(k, retire=True)
        self._retiring.append(w)
        self._tasks.append(asyncio.ensure_future(self._run_retiring(w)))

    async def _run_retiring(self, w: WorkerView) -> None:
        """Runs retiring worker ``w`` until it has ended its session: started again if
        it died (its session, still in the shared group, would go on taking a share of
        every message), ``RETIRE_ATTEMPTS`` times in all."""
        for attempt in range(1, RETIRE_ATTEMPTS + 1):
            try:
                code = await self._serve(w)
            except Exception as exc:  # an append failed: the gateway must stop
                log.error("MQTT ingest worker %d: %r; the gateway stops", w.index, exc)
                self._fail(exc)
                return
            if code == 0 or self._stopping:
                break
            log.error(
                "MQTT ingest: the session of %s, a worker no longer configured, was not "
                "ended (its process exited with status %s, try %d of %d)",
                w.options.client_id,
                code,
                attempt,
                RETIRE_ATTEMPTS,
            )
            await asyncio.sleep(RESTART_DELAY_S)
        w.catching_up = False  # never started again: nobody waits for it
        self._merge()

    async def _serve(self, w: WorkerView) -> int | None:
        """Start the worker process, answer its requests until it exits; its status."""
        ours, theirs = socket.socketpair()
        w.started_at, w.reported, w.silent = asyncio.get_running_loop().time(), False, 0
        # A worker catches up once, after the pool's start (the backlog of a gateway that
        # was down); one started again after that has seconds of backlog, within the
        # lateness, and holds nobody's batches.
        w.killed, w.catching_up = False, not w.caught_up
        # Waited for by the live merge from its start: ``LIVE_WAIT_S`` for its first word.
        w.upto, w.upto_at = None, w.started_at
        with theirs:
            w.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "connectors.mqtt.worker",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
            )
        reader, w.writer = await asyncio.open_unix_connection(sock=ours)
        stations, level = self._known_stations, logging.getLogger().getEffectiveLevel()
        w.send("start", w.index, w.options, stations, self.admission, self._paused, level)
        log.info("MQTT ingest worker %d started (pid %d)", w.index, w.process.pid)
        try:
            while True:
                try:
                    frame = await read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                if not w.reported:  # ``CATCH_UP_WAIT_S`` counts from its first frame
                    w.last_batch_at = asyncio.get_running_loop().time()
                w.heard = w.reported = w.busy = True
                try:
                    await self._handle(w, frame)
                finally:
                    w.busy = False
        finally:
            w.writer.close()
            w.writer = None
            if w.live is not None:  # not answered: the broker sends its messages again
                w.live[1].cancel()
                w.live = None
            # One that died before it caught up is still waited for once started again
            # (its backlog is still to come), for ``CATCH_UP_WAIT_S`` at most.
            self._merge()
        return await w.process.wait()

    async def _handle(self, w: WorkerView, frame: tuple[Any, ...]) -> None:
        kind = frame[0]
        if kind == "produce":
            sensors: pool_merge.Sensors = frame[1]
            loop = asyncio.get_running_loop()
            w.last_batch_at = loop.time()
            self._upto(w, frame[2])
            if self._stopping or not any(len(x[2]) for x in sensors):
                async with self._append_lock:  # after the appends decided before it
                    await self._produce([ReadingBlock(*x[:4]) for x in sensors])
            else:
                done = loop.create_future()
                if w.catching_up:  # its session's backlog: merged by time (``_merge``)
                    blocks = [ReadingBlock(*x[:4]) for x in sensors]
                    w.pending = (pool_merge.columns(blocks), done)
                    self._merge()
                    await done
                else:  # answered once all of it is appended; its frames read meanwhile
                    w.live = (pool_merge.Held(sensors), done)
                    done.add_done_callback(functools.partial(self._answer, w, w.writer))
                    self._merge()
                    return
            w.send("done")
        elif kind == "upto":
            self._upto(w, frame[1])
            self._merge()
        elif kind == "caught-up":
            w.catching_up, w.caught_up = False, True
            self._merge()
        elif kind == "session":
            if frame[1]:
                log.warning(
                    "MQTT ingest: the broker still has the session of %s, a worker no "
                    "longer configured (mqtt.processes was higher): taking the messages "
                    "it holds, then ending it",
                    w.options.client_id,
                )
                if not any(r.index == w.index + 1 for r in self._retiring):
                    self._retire(w.index + 1)
        elif kind == "dead":
            await self._dead_letter(frame[1], frame[2], frame[3])
            w.send("done")
        elif kind == "seq":
            if self._on_sequence is not None:
                try:
                    self._on_sequence(frame[1], frame[2], frame[3])
                except Exception:  # a bug in following the numbers does not stop ingest
                    log.exception("MQTT ingest: sequence numbers of %s not followed", frame[1])
        elif kind == "drops":
            if self._on_broker_drops is not None:
                await self._on_broker_drops(frame[1])
        elif kind == "state":
            if w.killed:
                return  # sent before it was taken for hung, read after: not believed
            connected, error, since_ms, failures, w.subscribed, w.counters = frame[1:]
            since_ms = since_ms or int(time.time() * 1000)
            w.connection = Connection(connected, error, since_ms, failures)
            w.ever_subscribed |= w.subscribed
            self._merge()  # one that cannot reach the broker is not waited for
            if w.subscribed and w.restarted:
                w.restarted = False
                log.warning("MQTT ingest worker %d subscribed again after its restart", w.index)
            self._update_subscribed()

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

    async def _watch(self) -> None:
        """Every ``REPORT_S``: a worker silent for ``SILENT_REPORTS`` ticks in a row
        (ticks on time only), or without a first report ``START_TIMEOUT_S`` after its
        start, is hung: ``_hung``."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        try:
            while not self._stopping:
                await asyncio.sleep(REPORT_S)
                now = loop.time()
                # Late, this loop was held up: the workers' frames may wait unread.
                self._tick(now, on_time=now - last < 2 * REPORT_S)
                last = now
        except Exception as exc:  # no watchdog: a hung worker would go unseen
            log.error("MQTT ingest pool: the watchdog failed: %r; the gateway stops", exc)
            self._fail(exc)

    def _tick(self, now: float, *, on_time: bool) -> None:
        """One of ``_watch``'s ticks at loop time ``now``; none once stopping (the
        workers have ``STOP_TIMEOUT_S``)."""
        if self._stopping:
            return
        for w in self._views():
            why = w.tick(now, on_time=on_time)
            if why is not None:
                self._hung(w, why)
        self._merge()  # a catching-up worker may no longer be waited for

    def _hung(self, w: WorkerView, why: str) -> None:
        """Take worker ``w`` for hung: not subscribed from now on, killed (``_run``
        starts it again; the broker redelivers what it had not acknowledged)."""
        assert w.process is not None
        log.error(
            "MQTT ingest worker %d (pid %d) is hung (%s): killing it to start it again",
            w.index,
            w.process.pid,
            why,
        )
        self._retired["worker_hangs"] += 1
        w.subscribed, w.silent, w.reported, w.killed = False, 0, True, True
        w.connection = Connection(error=f"worker hung ({why}): restarting")
        self._update_subscribed()
        w.process.kill()

    def _update_subscribed(self) -> None:
        if all(w.subscribed for w in self._workers):
            self.subscribed.set()
        else:
            self.subscribed.clear()

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


#: The ingest a gateway runs: in its own process, or over worker processes.
Ingest = MqttIngest | MqttIngestPool


def mqtt_ingest(
    options: MqttOptions,
    produce: Produce,
    dead_letter: DeadLetter,
    known_stations: Stations | None = None,
    on_broker_drops: BrokerDrops | None = None,
    admission: Admission | None = None,
    on_sequence: Sequences | None = None,
) -> Ingest:
    """``MqttIngest`` for ``options.processes`` 1 (the path of a single process, as
    before), else ``MqttIngestPool``; the same arguments."""
    kind = MqttIngestPool if options.processes > 1 else MqttIngest
    return kind(
        options, produce, dead_letter, known_stations, on_broker_drops, admission, on_sequence
    )

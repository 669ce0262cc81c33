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

A worker that hangs is found, logged at ERROR, counted (``counters["worker_hangs"]``),
killed and started again like a worker that died: ``connectors.mqtt.pool_watch``.

``stop``: every worker stops as ``MqttIngest.stop`` does, this process answering its
batch in hand meanwhile: written here, acknowledged, and read by the broker before the
worker disconnects (the fence), so nothing appended here is delivered again after a
restart. A worker that has not exited within ``STOP_TIMEOUT_S`` is killed.

Order: a station's readings, spread by the broker over the workers, may reach the log
out of arrival order across batches (the kernels take them within the topology's
lateness); the backlogs the workers catch up on after a restart are merged in time
order: ``connectors.mqtt.pool_backlog``. The answers to each worker's frames:
``connectors.mqtt.pool_requests``. ``MqttIngestPool`` has both, and the watchdog's
``Watchdog``, as bases.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import socket
import sys
import threading
from collections import Counter

from connectors.ingest import Admission, DeadLetter, Produce, Stations
from connectors.mqtt.client import STOP_TIMEOUT_S as INGEST_STOP_TIMEOUT_S
from connectors.mqtt.client import BrokerDrops, MqttIngest, Sequences
from connectors.mqtt.connection import Connection
from connectors.mqtt.options import MqttOptions
from connectors.mqtt.pool_backlog import CATCH_UP_WAIT_S
from connectors.mqtt.pool_requests import WorkerRequests
from connectors.mqtt.pool_watch import Watchdog
from connectors.mqtt.pool_worker import WorkerView
from connectors.mqtt.topics import TopicTemplate
from connectors.mqtt.worker import read_frame

# CATCH_UP_WAIT_S: re-exported, its home before the split.
__all__ = ["CATCH_UP_WAIT_S", "Ingest", "MqttIngestPool", "mqtt_ingest"]

log = logging.getLogger(__name__)

#: How long the workers may take to stop before they are killed (seconds): their own
#: bound (the batch in hand, the fence) and a margin to exit.
STOP_TIMEOUT_S = INGEST_STOP_TIMEOUT_S + 5.0
#: Wait before a dead worker is started again (seconds).
RESTART_DELAY_S = 1.0
#: Tries to end a session a worker no longer configured still has (a retiring worker
#: that died is started again this many times in all).
RETIRE_ATTEMPTS = 3


class MqttIngestPool(WorkerRequests, Watchdog):
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
        w.last_batch_at = w.started_at
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
                w.heard = w.reported = w.busy = True
                try:
                    await self._handle(w, frame)
                finally:
                    w.busy = False
        finally:
            w.writer.close()
            w.writer = None
            # One that died before it caught up is still waited for once started again
            # (its backlog is still to come), for ``CATCH_UP_WAIT_S`` at most.
            self._merge()
        return await w.process.wait()

    def _update_subscribed(self) -> None:
        if all(w.subscribed for w in self._workers):
            self.subscribed.set()
        else:
            self.subscribed.clear()


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

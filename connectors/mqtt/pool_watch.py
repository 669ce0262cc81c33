"""The pool's watchdog (``connectors.mqtt.pool``): it finds the worker processes that
hang.

A worker that hangs is found: one that has sent nothing for ``SILENT_REPORTS``
report periods (``REPORT_S`` each: 2.5 s in all) while this side was not busy with its request
(SIGSTOP, a deadlock; a worker reports even while idle) is logged at ERROR, counted
(``counters["worker_hangs"]``), no longer counts as subscribed (``state``, ``/readyz``)
and is killed, then started again like a worker that died: within about 4 s plus its
restart. A worker that has not reported ``START_TIMEOUT_S`` after its start is killed
too. Periods in which this process's own event loop was held up (a tick late by more
than a period) are not counted against a worker.

The rule for one worker (silent how long, started how long ago) is
``connectors.mqtt.pool_worker.WorkerView.tick``.

``Watchdog`` is a base of ``MqttIngestPool``: it reads the pool's workers (``_views``),
its ``stop`` (``_stopping``), its counts of workers that died (``_retired``), its
failure (``_fail``), its merge (``_merge``) and ``_update_subscribed``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from connectors.mqtt.connection import Connection
from connectors.mqtt.pool_worker import WorkerView
from connectors.mqtt.worker import REPORT_S

__all__ = ["Watchdog"]

# The pool's logger: what is said here reads as the pool's, as before the split.
log = logging.getLogger("connectors.mqtt.pool")


class Watchdog:
    """The hung-worker watchdog of ``MqttIngestPool`` (a base of it; see the module)."""

    # ``MqttIngestPool``'s, set by its ``__init__`` and read here.
    _stopping: bool
    _retired: Counter[str]

    def _views(self) -> list[WorkerView]:
        raise NotImplementedError

    def _fail(self, exc: BaseException) -> None:
        raise NotImplementedError

    def _merge(self) -> None:
        raise NotImplementedError

    def _update_subscribed(self) -> None:
        raise NotImplementedError

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

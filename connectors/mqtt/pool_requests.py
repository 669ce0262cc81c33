"""What the pool (``connectors.mqtt.pool``) does with each frame a worker process sends:
a batch to append (``produce``: at once, or held for the time-ordered merge of the
backlogs, ``connectors.mqtt.pool_backlog``), the end of its catch-up, whether the broker
still has a retiring worker's session, a dead letter, sequence numbers, the broker's
drop count, and its reported state.

Contracts: a batch's ``done`` goes back only once all of it is durable; a dead letter's
once it is written; a report sent by a worker before it was taken for hung is not
believed. ``WorkerRequests`` is a base of ``MqttIngestPool``: it reads the pool's
callbacks (``_dead_letter``, ``_on_sequence``, ``_on_broker_drops``), its retiring
workers (``_retiring``, ``_retire``) and ``_update_subscribed``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from connectors.ingest import DeadLetter, Reading
from connectors.mqtt import pool_merge
from connectors.mqtt.client import BrokerDrops, Sequences
from connectors.mqtt.connection import Connection
from connectors.mqtt.pool_backlog import BacklogMerge
from connectors.mqtt.pool_worker import WorkerView
from engine.contracts.batch import ReadingBlock

__all__ = ["WorkerRequests"]

# The pool's logger: what is said here reads as the pool's, as before the split.
log = logging.getLogger("connectors.mqtt.pool")


class WorkerRequests(BacklogMerge):
    """The answers of ``MqttIngestPool`` to its workers' frames (a base of it; see the
    module)."""

    # ``MqttIngestPool``'s, set by its ``__init__`` and read here.
    _dead_letter: DeadLetter
    _on_broker_drops: BrokerDrops | None
    _on_sequence: Sequences | None
    _retiring: list[WorkerView]

    def _retire(self, k: int) -> None:
        raise NotImplementedError

    def _update_subscribed(self) -> None:
        raise NotImplementedError

    async def _handle(self, w: WorkerView, frame: tuple[Any, ...]) -> None:
        kind = frame[0]
        if kind == "produce":
            blocks = [ReadingBlock(*sensor) for sensor in frame[1]]
            cols = pool_merge.columns(blocks)
            w.last_batch_at = asyncio.get_running_loop().time()
            if cols and not self._stopping and any(x.catching_up for x in self._views()):
                done = asyncio.get_running_loop().create_future()
                w.pending = (cols, done)
                self._merge()
                await done
            else:
                if self._appends:  # merged before this batch came: they go first
                    await asyncio.wait(list(self._appends))
                readings: list[Reading | ReadingBlock] = [*blocks]
                await self._produce(readings)
            w.send("done")
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

"""Gateway health: messages the MQTT broker dropped before Vigil could take them.

mosquitto counts every message it drops because a client's queue or in-flight window is
full (``max_queued_messages``, ``max_inflight_messages``) in ``$SYS/broker/publish/
messages/dropped``: cumulative since the broker started, for all clients, published
(retained) every ``sys_interval`` seconds when it changed. Readings dropped there never
reach Vigil, so they cannot be dead-lettered; what Vigil can do is say so. Each rise of the
count over what was already reported raises a gateway health alert (``RULE_ID``, yellow:
above a sensor's health alerts, which are blue, because every station behind the broker
may have lost readings; below the water levels), and logs an error. The alert resolves
once the count has not risen for ``clear_after_ms``.

What was reported is kept in a small JSON file beside the gateway's log, so that a
restart neither repeats old drops nor misses those that happened while it was down (the
count it finds is compared with the one it reported). A count below the reported one
means the broker restarted: its count began again from zero.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.contracts.alerts import AlertEvent, Level, transition_event

__all__ = ["CLEAR_AFTER_MS", "METRIC", "RULE_ID", "BrokerDropAlerts"]

log = logging.getLogger(__name__)

RULE_ID = "gateway#broker-drops"
METRIC = "broker_dropped_messages"
#: The alert resolves after this long without a new drop (ms).
CLEAR_AFTER_MS = 10 * 60_000
LEVEL = Level.YELLOW

SendAlerts = Callable[[list[AlertEvent]], Awaitable[None]]


@dataclass(frozen=True)
class _Reported:
    broker: str
    count: int = 0  # the broker's cumulative count, as last reported
    since: int | None = None  # ms: the first drop of the firing episode; None when clear
    last: int | None = None  # ms: the latest rise


class BrokerDropAlerts:
    """Turns the broker's cumulative dropped count into gateway health alerts.

    ``send`` must return once the events are durable; the reported count is saved only
    after it returns, so a crash between the two repeats the alert, never loses it.
    Without ``send`` (``vigil ingest``, which has no alerts topic) the drops are only logged.
    """

    def __init__(
        self,
        *,
        gateway: str,
        broker: str,
        send: SendAlerts | None = None,
        state_path: Path | None = None,
        clear_after_ms: int = CLEAR_AFTER_MS,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.gateway = gateway
        self.broker = broker
        self._send = send
        self._path = state_path
        self._clear_after_ms = clear_after_ms
        self._clock = clock
        self._state = self._load()
        # observe (the ingest task) and check_clear (a timer) each read the state, send,
        # then save it: one at a time, or a rise during a resolve would be overwritten.
        self._lock = asyncio.Lock()

    @property
    def firing(self) -> bool:
        return self._state.since is not None

    async def observe(self, total: int) -> None:
        """The broker reports ``total`` messages dropped since it started."""
        async with self._lock:
            await self._observe(total)

    async def _observe(self, total: int) -> None:
        state = self._state
        reported = state.count if total >= state.count else 0  # else: the broker restarted
        new = total - reported
        if new <= 0:
            if total != state.count:
                self._save(_Reported(self.broker, total, state.since, state.last))
            return
        now = self._clock()
        since = state.since if state.since is not None else now
        log.error(
            "MQTT broker %s dropped %d messages (%d since it started): readings lost before "
            "Vigil could take them; raise its max_queued_messages (README: What Vigil needs "
            "from the broker)",
            self.broker,
            new,
            total,
        )
        previous = LEVEL if state.since is not None else Level.NONE
        await self._emit(LEVEL, previous, since, now, new, total)
        self._save(_Reported(self.broker, total, since, now))

    async def check_clear(self) -> None:
        """Resolve the alert once no drop has come for ``clear_after_ms``; call it often."""
        async with self._lock:
            await self._check_clear()

    async def _check_clear(self) -> None:
        state = self._state
        now = self._clock()
        if state.since is None or state.last is None or now - state.last < self._clear_after_ms:
            return
        quiet_s = self._clear_after_ms // 1000
        log.warning("MQTT broker %s: no dropped message for %d s", self.broker, quiet_s)
        await self._emit(Level.NONE, LEVEL, state.since, now, 0, state.count)
        self._save(_Reported(self.broker, state.count))

    async def _emit(
        self, level: Level, previous: Level, since: int, at: int, new: int, total: int
    ) -> None:
        if self._send is None:
            return
        if level is Level.NONE:
            quiet_min = self._clear_after_ms // 60_000
            summary = f"MQTT broker {self.broker}: no dropped message for {quiet_min} min"
        else:
            summary = (
                f"MQTT broker {self.broker} dropped {new} messages ({total} since it started): "
                f"readings were lost before the gateway {self.gateway} could take them"
            )
        labels = {"health": "broker-drops", "broker": self.broker, "dropped_total": str(total)}
        event = transition_event(
            RULE_ID, self.gateway, METRIC, level, previous, since, at, float(new), 0.0,
            summary, labels,
        )  # fmt: skip
        await self._send([event])

    def _load(self) -> _Reported:
        if self._path is None or not self._path.exists():
            return _Reported(self.broker)
        try:
            saved = _Reported(**json.loads(self._path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s unreadable (%s): broker drops counted from zero", self._path, exc)
            return _Reported(self.broker)
        return saved if saved.broker == self.broker else _Reported(self.broker)

    def _save(self, state: _Reported) -> None:
        self._state = state
        if self._path is None:
            return
        tmp = self._path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(asdict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)

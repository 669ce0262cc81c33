"""An ingest worker process as the pool (``connectors.mqtt.pool``) sees it: its socket,
its last reported state, and the watchdog's rule for when it is hung."""

from __future__ import annotations

import asyncio
from typing import Any

from connectors.mqtt.connection import Connection
from connectors.mqtt.options import MqttOptions
from connectors.mqtt.pool_merge import Columns
from connectors.mqtt.worker import REPORT_S, write_frame

__all__ = ["SILENT_REPORTS", "START_TIMEOUT_S", "WorkerView"]

#: Report periods (``REPORT_S``) a worker may stay silent before it is taken for hung.
SILENT_REPORTS = 5
#: How long a started worker may take to send its first report (seconds): its imports
#: and settings, on a loaded machine.
START_TIMEOUT_S = 60.0


class WorkerView:
    """One worker process as this side sees it: its socket and last reported state."""

    def __init__(self, index: int, options: MqttOptions) -> None:
        self.index = index
        self.options = options
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connection = Connection()
        self.subscribed = False
        self.ever_subscribed = False
        self.restarted = False  # since it last subscribed
        self.counters: dict[str, int] = {}
        # The watchdog's view (``tick``), on the event loop:
        self.started_at = 0.0  # loop time the process was started
        self.reported = False  # sent a frame since it was started
        self.heard = False  # sent a frame since the last tick
        self.busy = False  # this side is handling its request: it waits for us
        self.silent = 0  # ticks in a row without a frame
        self.killed = False  # taken for hung: its frames still in the socket are not believed
        #: Its process is taking the backlog its session held (``MqttIngest.catching_up``).
        self.catching_up = False
        #: It caught up once since the pool started (a restart after that catches none).
        self.caught_up = False
        #: When it last sent a batch, or was started (loop time, s).
        self.last_batch_at = 0.0
        #: The others' batches stopped waiting for its catch-up (logged once).
        self.not_waited = False
        #: A batch of that backlog waiting to be merged (``MqttIngestPool._merge``).
        #: What of it is not appended yet, and its answer.
        self.pending: tuple[Columns, asyncio.Future[None]] | None = None

    def send(self, *frame: Any) -> None:
        """Queue a frame; a worker gone meanwhile misses it (it is restarted with the
        current settings)."""
        if self.writer is not None and not self.writer.is_closing():
            write_frame(self.writer, frame)

    def tick(self, now: float, *, on_time: bool) -> str | None:
        """One watchdog tick at loop time ``now`` (``on_time``: the tick was not late,
        so the pool's loop was free to read the worker's frames): why the worker is
        hung, or None. Silent for ``SILENT_REPORTS`` on-time ticks in a row, or no
        first report ``START_TIMEOUT_S`` after its start; a worker waiting for this
        side's answer (``busy``) is not silent."""
        if self.process is None or self.process.returncode is not None:
            return None  # starting, or exited: the pool restarts it
        if not self.reported:
            if now - self.started_at > START_TIMEOUT_S:
                return f"no report {now - self.started_at:.0f} s after its start"
            return None
        if self.heard or self.busy:
            self.heard, self.silent = False, 0
        elif on_time:
            self.silent += 1
            if self.silent >= SILENT_REPORTS:
                return f"silent for {self.silent * REPORT_S:.1f} s"
        return None

"""A bound on a clean stop: a gateway or worker that is still stopping after
``STOP_DEADLINE_S`` seconds logs what it is waiting for and exits.

A stop waits on things outside the process (the broker's answer to leaving the group,
a rebalance under way, the last records' processing). Each wait has its own bound where
Vigil owns it (the drain of ``engine.runtime.ticks``: 20 s at most), but Faust's and
aiokafka's do not all have one, and a process that hangs in its stop looks alive to its
supervisor until that kills it, with nothing in the log to say why. Past the deadline
the process logs its threads' and its asyncio tasks' stacks at CRITICAL and ends with
``EXIT_STOP_TIMEOUT``: nothing is lost by it (what was not committed is processed again
by the next owner, what was acknowledged to a device is in the log), and the exit status
tells the supervisor that the stop was not clean.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import threading
import traceback

__all__ = ["EXIT_STOP_TIMEOUT", "STOP_DEADLINE_S", "arm_stop_deadline"]

log = logging.getLogger(__name__)

#: Seconds from the start of a stop to giving up on it: above the drain's 20 s and the
#: few seconds the rest takes, below the shipped unit's ``TimeoutStopSec`` and the
#: container's ``--stop-timeout`` (60 s: their SIGKILL would leave no stacks).
STOP_DEADLINE_S = 50.0
#: The exit status of a stop given up on (EX_SOFTWARE).
EXIT_STOP_TIMEOUT = 70

_armed: threading.Timer | None = None


def arm_stop_deadline(loop: asyncio.AbstractEventLoop, deadline_s: float = STOP_DEADLINE_S) -> None:
    """Start the deadline of the stop now beginning (once per process: a second call,
    as when a second service stops, keeps the first deadline)."""
    global _armed
    if _armed is not None:
        return
    _armed = threading.Timer(deadline_s, _give_up, args=(loop, deadline_s))
    _armed.daemon = True  # a process that ends in time is not held by it
    _armed.start()


def _give_up(loop: asyncio.AbstractEventLoop, deadline_s: float) -> None:
    log.critical(
        "the stop did not finish in %.0f s: exiting with status %d; what it waits for:\n%s",
        deadline_s,
        EXIT_STOP_TIMEOUT,
        _stacks(loop),
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_STOP_TIMEOUT)


def _stacks(loop: asyncio.AbstractEventLoop) -> str:
    """Every thread's stack, then every pending asyncio task's, as text."""
    out = io.StringIO()
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        print(f"thread {names.get(ident, ident)}:", file=out)
        traceback.print_stack(frame, file=out)
    try:
        # Read from another thread while the loop runs: a task list that changes
        # meanwhile is retried by all_tasks; a failure must not stop the exit.
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            print(f"task {task.get_name()}: {task.get_coro()!r}", file=out)
            task.print_stack(limit=20, file=out)
    except Exception as exc:  # diagnostics only: a failure here must not stop the exit
        print(f"tasks not readable: {exc!r}", file=out)
    return out.getvalue()

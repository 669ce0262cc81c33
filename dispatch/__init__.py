"""Dispatch: who is told what, when — the routing language and the dispatcher's logic.

Pure and clock-driven: alert events and people's actions in, ``Notification``s out on
``Dispatcher.tick()``. No I/O except reading the routing file (``load_dispatch_config``).
See dispatch/README.md for the file format and the rules of timing.
"""

from dispatch.clock import Clock, ManualClock, SystemClock
from dispatch.config import DispatchConfig, load_dispatch_config, read_dispatch_config
from dispatch.dispatcher import Dispatcher
from dispatch.lifecycle import AlertState, LifecycleError
from dispatch.router import Router, labels_of
from dispatch.silences import Silence

__all__ = [
    "AlertState",
    "Clock",
    "DispatchConfig",
    "Dispatcher",
    "LifecycleError",
    "ManualClock",
    "Router",
    "Silence",
    "SystemClock",
    "labels_of",
    "load_dispatch_config",
    "read_dispatch_config",
]

"""Gateway health: messages lost on the way, seen as gaps in the devices' own numbers.

Many devices number their messages (a ``seq`` in Vigil's MQTT JSON; SL 651's serial).
A number that never arrives is a message the network or the broker lost: it cannot be
dead-lettered, but it can be counted and said. ``SequenceTracker`` finds the gaps of each
device's numbers in its own order; ``SequenceGapAlerts`` counts them and raises a
gateway health alert (``RULE_ID``, yellow, like ``broker_drops``) when at least
``threshold`` messages were lost within ``window_ms``; it resolves once ``window_ms``
passes without a new loss.

What is a gap, per device (its ``source``: an MQTT topic, an RTU's station):

* Numbers rise by one per message. A number ahead of the highest seen by more than one
  leaves the numbers in between *missing*.
* A missing number that arrives later (reordering) is no loss. It is counted lost only
  once ``reorder`` numbers above it have arrived, or ``reorder_wait_ms`` after it went
  missing (``expire``, called by a timer): a device that reports once an hour is not
  held for ``reorder`` hours.
* A number seen before (the broker redelivering what it had in flight, the device
  sending again) is a duplicate, counted apart, never a loss: each device remembers which
  of the ``MEMORY`` numbers below its highest it has seen (a bit each).
* A number more than ``MEMORY`` below the highest starts a new run: the device
  restarted, or its counter wrapped (the numbers still missing below the old highest
  are lost). Losses right at the wrap are not counted (the counter's modulus is the
  device's own), and none are invented. A device that restarts before its
  ``MEMORY``-th message repeats numbers already seen: duplicates, until it passes its
  old highest. A number below the first one seen (reordered at the start) is late,
  never a restart.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from engine.contracts.alerts import AlertEvent, Level, transition_event

__all__ = ["METRIC", "RULE_ID", "SequenceGapAlerts", "SequenceTracker"]

log = logging.getLogger(__name__)

RULE_ID = "gateway#sequence-gaps"
METRIC = "lost_messages"
LEVEL = Level.YELLOW
#: How far below its highest number a device's numbers are remembered: more than a
#: broker redelivers at once (mosquitto's in-flight window, ``max_inflight_messages``).
MEMORY = 2048
_MASK = (1 << MEMORY) - 1
#: How many devices an alert's summary and ``vigil status`` name (the most losses first).
SHOWN = 10

SendAlerts = Callable[[list[AlertEvent]], Awaitable[None]]


@dataclass
class _Run:
    """One device's numbers: the highest seen, which of the ``MEMORY`` below it were
    seen (bit i: ``top - i``), and those missing (number -> ms it went missing)."""

    top: int
    seen: int = 1
    missing: dict[int, int] = field(default_factory=dict)


@dataclass
class _Counts:
    lost: int = 0
    duplicates: int = 0
    restarts: int = 0


class SequenceTracker:
    """Per-device gap finder (see the module doc); pure, no I/O. Memory: per device that
    ever sent a number, a record of at most ``MEMORY`` bits and ``reorder`` missing."""

    def __init__(self, reorder: int = 16, reorder_wait_ms: int = 60_000) -> None:
        if reorder < 1:
            raise ValueError(f"reorder must be at least 1, got {reorder}")
        self.reorder = reorder
        self.reorder_wait_ms = reorder_wait_ms
        self._runs: dict[str, _Run] = {}
        self._waiting: set[str] = set()  # devices with numbers missing
        self.counts: dict[str, _Counts] = {}

    def observe(self, device: str, seq: int, now_ms: int) -> int:
        """``device`` sent number ``seq``, received at ``now_ms``; returns how many of its
        messages are now known lost (0 for most)."""
        counts = self.counts.setdefault(device, _Counts())
        run = self._runs.get(device)
        if run is None:
            self._runs[device] = _Run(seq)
            return 0
        if seq > run.top:
            for n in range(max(run.top + 1, seq - self.reorder), seq):
                run.missing[n] = now_ms
            # Numbers skipped by more than the window can no longer arrive in order.
            lost = max(0, seq - run.top - 1 - self.reorder)
            run.seen = ((run.seen << min(seq - run.top, MEMORY)) | 1) & _MASK
            run.top = seq
            lost = self._lose(counts, run, lost, lambda n, _: n <= seq - self.reorder)
            if run.missing:
                self._waiting.add(device)
            return lost
        back = run.top - seq
        if back >= MEMORY:  # a restart or a wrap: a new run; what its last one missed is lost
            counts.restarts += 1
            self._runs[device] = _Run(seq)
            self._waiting.discard(device)
            return self._lose(counts, run, 0, lambda n, at: True)
        if run.seen >> back & 1:
            counts.duplicates += 1
            return 0
        run.seen |= 1 << back
        run.missing.pop(seq, None)  # late, not lost (or, past the wait, counted already)
        return 0

    def expire(self, now_ms: int) -> dict[str, int]:
        """Count as lost the numbers missing for ``reorder_wait_ms``; device -> lost."""
        out = {}
        cutoff = now_ms - self.reorder_wait_ms
        for device in list(self._waiting):
            run = self._runs[device]
            lost = self._lose(self.counts[device], run, 0, lambda _, at: at <= cutoff)
            if lost:
                out[device] = lost
            if not run.missing:
                self._waiting.discard(device)
        return out

    @staticmethod
    def _lose(counts: _Counts, run: _Run, lost: int, gone: Callable[[int, int], bool]) -> int:
        for n in [n for n, at in run.missing.items() if gone(n, at)]:
            del run.missing[n]
            lost += 1
        counts.lost += lost
        return lost


class SequenceGapAlerts:
    """Counts the messages lost per device and raises or resolves the gateway's alert.

    ``observe`` runs on the ingest path (synchronous, cheap); ``check`` on a timer: it
    counts what waited too long for reordering and sends the alert's transitions,
    returning once ``send`` has made them durable. ``on_lost(n)`` (a Prometheus
    counter) hears of every loss as it is counted, with the connector (``mqtt``, ``sl651``)
    its device spoke through.
    """

    def __init__(
        self,
        *,
        gateway: str,
        send: SendAlerts,
        threshold: int = 1,
        window_ms: int = 600_000,
        reorder: int = 16,
        reorder_wait_ms: int = 60_000,
        on_lost: Callable[[str, int], None] = lambda connector, n: None,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.gateway = gateway
        self.tracker = SequenceTracker(reorder, reorder_wait_ms)
        self.threshold = threshold
        self.window_ms = window_ms
        self._send = send
        self._on_lost = on_lost
        self._clock = clock
        self._losses: deque[tuple[int, str, int]] = deque()  # (ms, device, lost)
        self._connector: dict[str, str] = {}  # device -> the connector it spoke through
        self._unlogged: Counter[str] = Counter()
        self._since: int | None = None  # the firing episode's start; None when clear

    @property
    def firing(self) -> bool:
        return self._since is not None

    def observe(self, device: str, seqs: list[int], now_ms: int, connector: str = "mqtt") -> None:
        """``device``'s message numbers, in the order they arrived through ``connector``."""
        if device not in self._connector:
            self._connector[device] = connector
        for seq in seqs:
            lost = self.tracker.observe(device, seq, now_ms)
            if lost:
                self._lost(device, lost, now_ms)

    def _lost(self, device: str, lost: int, now_ms: int) -> None:
        self._losses.append((now_ms, device, lost))
        self._unlogged[device] += lost
        self._on_lost(self._connector[device], lost)

    def lost_by_device(self) -> dict[str, int]:
        """Messages lost per device since the start, the most first (``SHOWN`` devices)."""
        lost = Counter({d: c.lost for d, c in self.tracker.counts.items() if c.lost})
        return dict(lost.most_common(SHOWN))

    def totals(self) -> dict[str, int]:
        """Devices numbering their messages, and their losses, duplicates and restarts."""
        counts = self.tracker.counts.values()
        return {
            "devices": len(self.tracker.counts),
            "lost": sum(c.lost for c in counts),
            "duplicates": sum(c.duplicates for c in counts),
            "restarts": sum(c.restarts for c in counts),
        }

    async def check(self) -> None:
        """Count what waited too long, log it, and raise or resolve the alert."""
        now = self._clock()
        for device, lost in self.tracker.expire(now).items():
            self._lost(device, lost, now)
        if self._unlogged:
            shown = ", ".join(f"{d} {n}" for d, n in self._unlogged.most_common(SHOWN))
            log.error(
                "%d messages lost on the way (gaps in the devices' sequence numbers): %s",
                sum(self._unlogged.values()),
                shown,
            )
            self._unlogged.clear()
        while self._losses and self._losses[0][0] <= now - self.window_ms:
            self._losses.popleft()
        recent: Counter[str] = Counter()
        for _, device, lost in self._losses:
            recent[device] += lost
        total = sum(recent.values())
        if self._since is None and total >= self.threshold:
            self._since = now
            await self._emit(LEVEL, Level.NONE, now, total, recent)
        elif self._since is not None and not self._losses:
            await self._emit(Level.NONE, LEVEL, now, 0, recent)
            self._since = None

    async def _emit(
        self, level: Level, previous: Level, at: int, total: int, recent: Counter[str]
    ) -> None:
        assert self._since is not None
        window_min = self.window_ms // 60_000
        if level is Level.NONE:
            summary = f"No message lost on the way for {window_min} min"
            devices = ""
        else:
            devices = ", ".join(f"{d}: {n}" for d, n in recent.most_common(SHOWN))
            summary = (
                f"{total} messages lost on the way to the gateway {self.gateway} in the last "
                f"{window_min} min (gaps in the devices' sequence numbers): {devices}"
            )
        labels = {"health": "sequence-gaps", "devices": devices}
        event = transition_event(
            RULE_ID, self.gateway, METRIC, level, previous, self._since, at, float(total),
            float(self.threshold), summary, labels,
        )  # fmt: skip
        await self._send([event])

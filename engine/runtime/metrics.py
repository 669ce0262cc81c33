"""The process's Prometheus metrics, one registry per topology.

Names follow Prometheus' conventions: ``vigil_`` prefix, counters end in ``_total``,
durations are ``_seconds``, sizes ``_bytes``. Labels are bounded: connector, station
kind, dead-letter reason *class* (``engine.contracts.dead_letters``), rule and level,
sink, telemetry partition, log topic; never a station on a hot counter.

What is counted as it happens lives here (``Metrics``); what is a state (MQTT
connection, lag, log size) is read when scraped, by the collectors that
``engine.runtime.services.observe`` registers on ``Metrics.registry``. The process's
memory, CPU and file descriptors come from the client's process collector.

``RecentCounts`` keeps per-minute counts for the last hour (dead letters by reason
class, readings in) for ``vigil status``: in memory, so they start at zero with the
process.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import faust
import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch
from engine.contracts.dead_letters import reason_class

__all__ = ["FaustSensor", "IngestMetrics", "Metrics", "RecentCounts"]

# The ``_created`` series double every counter's lines and tell an operator nothing
# the process start time does not.
disable_created_metrics()

#: Seconds: from a fast fsync to a kernel pass over a large backlog.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Seconds from a reading's durable append to its alert reaching the sinks: the basin
#: rules hold alerts for ``lateness_ms`` (a minute by default), so up to minutes.
_END_TO_END_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RecentCounts:
    """Counts by key per minute over the last ``minutes`` (default an hour)."""

    def __init__(self, minutes: int = 60, clock: Callable[[], float] = time.time) -> None:
        self._minutes = minutes
        self._clock = clock
        self._buckets: deque[tuple[int, Tally[str]]] = deque()

    def add(self, key: str, n: int = 1) -> None:
        minute = int(self._clock() // 60)
        if not self._buckets or self._buckets[-1][0] != minute:
            self._buckets.append((minute, Tally()))
            self._trim(minute)
        self._buckets[-1][1][key] += n

    def _trim(self, minute: int) -> None:
        while self._buckets and self._buckets[0][0] <= minute - self._minutes:
            self._buckets.popleft()

    def totals(self, since_s: float | None = None) -> dict[str, int]:
        """Counts by key over the window (or the minutes from ``since_s`` ago on)."""
        minute = int(self._clock() // 60)
        self._trim(minute)
        first = minute - self._minutes + 1
        if since_s is not None:
            first = max(first, int((self._clock() - since_s) // 60))
        out: Tally[str] = Tally()
        for m, counts in self._buckets:
            if m >= first:
                out.update(counts)
        return dict(out)


class IngestMetrics:
    """What every process that takes readings in counts (``vigil ingest mqtt``'s all):
    readings appended by connector and kind, dead letters, the append's latency, and
    the process's own collectors. ``registry`` is scraped."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.started_at = time.time()
        self.readings_in = Counter(
            "vigil_readings_received_total",
            "Readings appended durably to the telemetry topic, by connector and station kind",
            ["connector", "kind"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "vigil_dead_letters_total",
            "Messages and readings sent to the dead-letter topic, by reason class",
            ["reason"],
            registry=registry,
        )
        self.append_seconds = Histogram(
            "vigil_ingest_append_seconds",
            "Durable append of one ingest batch's readings (fsync included), by connector",
            ["connector"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        #: Last hour for ``vigil status``: dead letters by reason class, readings.
        self.recent_dead_letters = RecentCounts()
        self.recent_readings = RecentCounts()

    def count_readings(
        self, connector: str, batches: Iterable[TelemetryBatch], kinds: Mapping[str, str]
    ) -> None:
        """Count the readings of appended batches by the kind of their station
        (``unknown`` if the registry has none): per batch a ``bincount`` of its station
        column and a lookup per distinct station, nothing per reading."""
        per_kind: Tally[str] = Tally()
        total = 0
        for batch in batches:
            counts = np.bincount(batch.station_idx, minlength=len(batch.stations))
            for station, n in zip(batch.stations, counts.tolist(), strict=True):
                per_kind[kinds.get(station, "unknown")] += n
            total += len(batch)
        for kind, n in per_kind.items():
            if n:
                self.readings_in.labels(connector, kind).inc(n)
        self.recent_readings.add("readings", total)

    def count_dead_letter(self, reason: str) -> None:
        cls = reason_class(reason)
        self.dead_letters.labels(cls).inc()
        self.recent_dead_letters.add(cls)


class Metrics(IngestMetrics):
    """A topology's counters and histograms, updated where things happen."""

    def __init__(self) -> None:
        super().__init__()
        registry = self.registry
        self.readings_evaluated = Counter(
            "vigil_readings_evaluated_total",
            "Readings the rule kernels evaluated (each telemetry batch this process applied)",
            registry=registry,
        )
        self.alerts = Counter(
            "vigil_alert_events_total",
            "Alert level transitions handed to the dispatcher, by rule and new level",
            ["rule", "level"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "vigil_evaluate_batch_seconds",
            "Evaluating one telemetry batch: kernels, then its alerts sent durably",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.kernel_seconds = Histogram(
            "vigil_kernel_seconds",
            "The rule kernels' pass over one telemetry batch (PartitionProcessor.process)",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_readings = Histogram(
            "vigil_evaluate_batch_readings",
            "Readings in one telemetry batch",
            buckets=(1, 10, 100, 500, 1000, 5000, 20_000, 100_000),
            registry=registry,
        )
        self.ingest_to_alert = Histogram(
            "vigil_ingest_to_alert_seconds",
            "From a telemetry batch's durable append to its alerts reaching the dispatcher",
            buckets=_END_TO_END_BUCKETS,
            registry=registry,
        )
        self.sequence_lost = Counter(
            "vigil_sequence_lost_messages_total",
            "Messages lost on the way, seen as gaps in the devices' sequence numbers, by "
            "connector (per device: vigil status)",
            ["connector"],
            registry=registry,
        )
        self.retention_deleted = Counter(
            "vigil_log_retention_deleted_records_total",
            "Records the embedded log's retention deleted",
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "vigil_consumer_commit_seconds",
            "Faust consumer offset commits (with the kernel checkpoints)",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.send_errors = Counter(
            "vigil_producer_send_errors_total",
            "Records Faust failed to send, by topic",
            ["topic"],
            registry=registry,
        )
        self.rebalances = Counter(
            "vigil_consumer_rebalances_total",
            "Consumer group rebalances this process took part in",
            registry=registry,
        )
        #: Fingerprint -> level of the alert series whose latest transition this process
        #: dispatched is above ``none`` (served as ``vigil_active_alerts``).
        self.active_alerts: dict[str, str] = {}

    def count_alerts(self, events: Iterable[AlertEvent]) -> None:
        for event in events:
            self.alerts.labels(event.rule_id, event.level).inc()
            if event.level == "none":
                self.active_alerts.pop(event.fingerprint, None)
            else:
                self.active_alerts[event.fingerprint] = event.level

    def active_by_level(self) -> dict[str, int]:
        """Active alert series by level (``blue`` .. ``red``)."""
        return dict(Tally(self.active_alerts.values()))


class FaustSensor(faust.Sensor):
    """Faust's own events that tell an operator something: commit latency, send
    errors, rebalances."""

    def __init__(self, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics

    def on_commit_initiated(self, consumer: Any) -> Any:
        return time.monotonic()

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        if isinstance(state, float):
            self.metrics.commit_seconds.observe(time.monotonic() - state)

    def on_send_initiated(
        self, producer: Any, topic: str, message: Any, keysize: int, valsize: int
    ) -> Any:
        return topic  # handed back to on_send_error

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        self.metrics.send_errors.labels(str(state or "unknown")).inc()

    def on_rebalance_start(self, app: Any) -> dict[str, Any]:
        self.metrics.rebalances.inc()
        return super().on_rebalance_start(app)

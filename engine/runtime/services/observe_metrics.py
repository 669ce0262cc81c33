"""The metrics that are states, read at each scrape of ``/metrics``.

What is counted as it happens lives in ``engine.runtime.metrics``; these collectors,
registered on a process's registry, read the states when Prometheus asks: the MQTT
connection (``MqttState``, the gateway's and ``vigil ingest mqtt``'s), the NB-IoT
ingest's counts (``NbiotState``, the gateway's; ``vigil status`` shows the same
families), and a topology's consumer lag, sink failures, active alerts, rules and
embedded log (``TopologyState``, the gateway's and a Kafka worker's).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from connectors.mqtt.pool import Ingest
from connectors.nbiot.service import NbiotIngest
from connectors.nbiot.uplink import REFUSALS
from engine.runtime.config import Settings
from engine.runtime.topology import Topology
from engine.runtime.transport.log import DurableLog

__all__ = ["MqttState", "NbiotState", "TopologyState", "rule_count"]


def rule_count(ruleset: Any) -> int:
    """Rules of every kind in a ``RuleSet``."""
    return (
        len(ruleset.rules)
        + len(ruleset.compound)
        + len(ruleset.derived)
        + len(ruleset.corroboration)
    )


class MqttState(Collector):
    """``vigil_mqtt_connected`` of one MQTT ingest, and its worker processes' restarts
    and hangs (``mqtt.processes`` > 1; 0 with one process)."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "vigil_mqtt_connected",
            "1 while the MQTT ingest is connected and subscribed, else 0",
            value=1.0 if self.ingest.state == "subscribed" else 0.0,
        )
        counters = self.ingest.counters
        yield CounterMetricFamily(
            "vigil_mqtt_worker_restarts",
            "MQTT ingest worker processes started again after they died or hung",
            value=counters.get("worker_restarts", 0),
        )
        yield CounterMetricFamily(
            "vigil_mqtt_worker_hangs",
            "MQTT ingest worker processes found silent (hung, stopped) and killed",
            value=counters.get("worker_hangs", 0),
        )


class NbiotState(Collector):
    """The NB-IoT ingest's counts (``connectors.nbiot.service``), read at each scrape:
    uplinks by path and outcome, refused uplinks by reason, readings dropped for a
    metric their station does not report, unregistered identities. ``counts`` gives
    the same families' values for ``vigil status``."""

    def __init__(self, ingest: NbiotIngest) -> None:
        self.ingest = ingest

    def collect(self) -> Iterator[Metric]:
        ingest = self.ingest
        uplinks = CounterMetricFamily(
            "vigil_nbiot_uplinks",
            "NB-IoT uplinks (CoAP requests, UDP datagrams, carrier pushes) by path and "
            "outcome: taken, duplicate (a sealed payload sent again: acknowledged, not "
            "ingested), refused (dead-lettered)",
            labels=["path", "outcome"],
        )
        for (path, outcome), n in sorted(ingest.uplinks.items()):
            uplinks.add_metric([path, outcome], float(n))
        yield uplinks
        refused = CounterMetricFamily(
            "vigil_nbiot_uplinks_refused",
            "NB-IoT uplinks dead-lettered, by reason",
            labels=["reason"],
        )
        for reason in REFUSALS:
            refused.add_metric([reason], float(ingest.refused[reason]))
        yield refused
        yield CounterMetricFamily(
            "vigil_nbiot_readings_dropped",
            "Readings left out of taken NB-IoT uplinks: of a metric their station does "
            "not report (the first per station and metric is dead-lettered)",
            value=float(ingest.decoder.dropped_readings),
        )
        unknown = ingest.unknown
        yield GaugeMetricFamily(
            "vigil_nbiot_unknown_devices",
            "Unregistered identities that sent NB-IoT uplinks since the start (counted "
            "one by one up to nbiot.unknown_capacity, beyond it not)",
            value=float(len(unknown.counts)),
        )

    def counts(self) -> dict[str, Any]:
        """The families' values: ``{"uplinks": {path: {outcome: n}}, "refused":
        {reason: n} (those above 0), "readings_dropped": n, "unknown_devices": n}``."""
        out: dict[str, Any] = {"uplinks": {}, "refused": {}}
        for family in self.collect():
            for sample in family.samples:
                n = int(sample.value)
                if family.name == "vigil_nbiot_uplinks":
                    labels = sample.labels
                    out["uplinks"].setdefault(labels["path"], {})[labels["outcome"]] = n
                elif family.name == "vigil_nbiot_uplinks_refused":
                    if n:
                        out["refused"][sample.labels["reason"]] = n
                else:
                    out[family.name.removeprefix("vigil_nbiot_")] = n
        return out


class TopologyState(Collector):
    """A topology's states; ``lag`` gives the latest lag snapshot (``LagMonitor``'s,
    refreshed before each scrape), ``log`` the embedded log (None on Kafka)."""

    def __init__(
        self,
        topology: Topology,
        settings: Settings,
        lag: Callable[[], dict[str, Any]],
        log: Callable[[], DurableLog | None],
    ) -> None:
        self.topology = topology
        self.settings = settings
        self.lag = lag
        self.log = log

    def collect(self) -> Iterator[Metric]:
        topology = self.topology
        lag = GaugeMetricFamily(
            "vigil_consumer_lag_batches",
            "Telemetry records (batches) appended but not yet evaluated, by partition",
            labels=["partition"],
        )
        for partition, p in self.lag().get("partitions", {}).items():
            if p.get("lag") is not None:
                lag.add_metric([partition], float(p["lag"]))
        yield lag
        failures = CounterMetricFamily(
            "vigil_sink_delivery_failures",
            "Alert deliveries a sink failed (each attempt, retries included), by sink",
            labels=["sink"],
        )
        for key, n in topology.dispatcher.counters.items():
            if key.startswith("failed."):
                failures.add_metric([key.removeprefix("failed.")], float(n))
        yield failures
        active = GaugeMetricFamily(
            "vigil_active_alerts",
            "Alert series above 'none' whose latest transition this process dispatched",
            labels=["level"],
        )
        by_level = topology.metrics.active_by_level()
        for level in ("blue", "yellow", "orange", "red"):
            active.add_metric([level], float(by_level.get(level, 0)))
        yield active
        yield GaugeMetricFamily(
            "vigil_rules_loaded", "Rules running (all kinds)", value=rule_count(topology.ruleset)
        )
        yield from self._log_metrics()

    def _log_metrics(self) -> Iterator[Metric]:
        log = self.log()
        if log is None:
            return
        yield GaugeMetricFamily(
            "vigil_log_size_bytes",
            "Bytes on disk of the embedded log (RocksDB files)",
            value=float(_dir_bytes(log.path)),
        )
        yield GaugeMetricFamily(
            "vigil_log_retention_seconds",
            "How long the embedded log keeps records every reader is done with",
            value=self.settings.retention_hours * 3600,
        )
        records = GaugeMetricFamily(
            "vigil_log_records", "Records kept in the embedded log, by topic", labels=["topic"]
        )
        oldest = GaugeMetricFamily(
            "vigil_log_oldest_record_timestamp_seconds",
            "Append time of the oldest record kept, by topic (epoch seconds)",
            labels=["topic"],
        )
        for topic, partitions in log.topics().items():
            kept = 0
            first: int | None = None
            for p in range(partitions):
                earliest = log.earliest(topic, p)
                kept += log.highwater(topic, p) - earliest
                head = log.read(topic, p, earliest, 1)
                if head and (first is None or head[0].timestamp < first):
                    first = head[0].timestamp
            records.add_metric([topic], float(kept))
            if first is not None:
                oldest.add_metric([topic], first / 1000)
        yield records
        yield oldest


def _dir_bytes(path: Path) -> int:
    total = 0
    for entry in os.scandir(path):
        try:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
            elif entry.is_dir(follow_symlinks=False):
                total += _dir_bytes(Path(entry.path))
        except FileNotFoundError:  # a compaction removed it meanwhile
            continue
    return total

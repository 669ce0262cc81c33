"""Consumer lag of the telemetry partitions this worker owns: logged and served.

Lag of a partition = its end offset (next offset the broker will write) minus the next
offset this worker's processor will apply (``PartitionProcessor.next_offset``), in
telemetry batches (records), not readings. A partition assigned here but not yet
restored shows the committed offset instead (``source: "committed"``).

``LagMonitor.install`` adds a periodic log line (``vigil.lag``) and the web view
``GET /vigil/lag/`` on the worker's Faust web server, returning JSON::

    {"partitions": {"3": {"end": 120, "processed": 118, "lag": 2, "source": "processor"}},
     "total_lag": 2, "readings_evaluated": 2400000, "checkpoints_written": 40}
"""

from __future__ import annotations

import logging
from typing import Any

from faust.types import TP

from engine.runtime.topology import Topology

__all__ = ["LagMonitor"]

log = logging.getLogger("vigil.lag")


class LagMonitor:
    """Reads end offsets from the broker and positions from the processors."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology

    async def snapshot(self) -> dict[str, Any]:
        """Per-partition lag now; asks the broker for end offsets (one request)."""
        app = self.topology.app
        topic = self.topology.telemetry.get_topic_name()
        consumer = app.consumer
        tps = sorted(tp for tp in consumer.assignment() if tp.topic == topic)
        ends: dict[TP, int] = dict(await consumer.highwaters(*tps)) if tps else {}
        partitions: dict[str, dict[str, Any]] = {}
        for tp in tps:
            end = ends.get(tp)
            proc = self.topology.processors.get(tp.partition)
            if proc is not None:
                processed, source = proc.next_offset, "processor"
            else:
                committed = getattr(consumer, "_committed_offset", {})
                processed = committed.get(tp) or 0
                source = "committed"
            partitions[str(tp.partition)] = {
                "end": end,
                "processed": processed,
                "lag": None if end is None else max(0, end - processed),
                "source": source,
            }
        counters = self.topology.counters
        return {
            "partitions": partitions,
            "total_lag": sum(p["lag"] or 0 for p in partitions.values()),
            "readings_evaluated": counters["readings_evaluated"],
            "checkpoints_written": counters["checkpoints_written"],
        }

    async def log_lag(self) -> None:
        if self.topology.app.rebalancing:
            return
        snap = await self.snapshot()
        per = " ".join(f"{p}:{v['lag']}" for p, v in snap["partitions"].items())
        log.info("telemetry lag (batches) total=%s %s", snap["total_lag"], per)

    def install(self, interval_s: float) -> None:
        """Log every ``interval_s`` seconds and serve ``/vigil/lag/``."""
        app = self.topology.app
        app.timer(interval_s)(self.log_lag)
        monitor = self

        async def lag_view(view: Any, request: Any) -> Any:
            return view.json(await monitor.snapshot())

        app.page("/vigil/lag/")(lag_view)

"""``vigil worker``: the topology on a Kafka cluster, one member of the consumer group.

Any number of workers with the same ``app_id`` share the telemetry and alert partitions
through Kafka's consumer group. A partition's kernel state follows it from worker to
worker through the checkpoints topic (``engine.runtime.kafka.checkpoints``). Each worker
dispatches the alert partitions it owns (a batch's alerts go to the alerts partition of
its telemetry partition, so one series is dispatched by one worker) into its sinks; the
JSONL sink drops keys it already holds. With ``dispatch:`` in the settings, one worker
of the group at a time also runs the routing dispatcher (people, acknowledgements,
escalation: ``engine.runtime.dispatch.kafka``), and every worker serves its API and
the duty room's page.

SIGTERM stops it cleanly: the agents finish the batch in hand, the consumer writes the
checkpoints and commits the offsets they cover, then the process exits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import faust

from connectors.sinks.base import Sink
from connectors.sinks.console import ConsoleSink
from connectors.sinks.jsonl import JsonlSink
from engine.runtime.config import Settings
from engine.runtime.dispatch.kafka import KafkaDispatch
from engine.runtime.dispatch.kafka_service import ensure_dispatch_topics
from engine.runtime.kafka.topics import TopicLayout, bootstrap_of, ensure_topics
from engine.runtime.services.lag import LagMonitor
from engine.runtime.services.observe import Observer
from engine.runtime.services.rules_source import load_rules
from engine.runtime.topology import Topology

__all__ = ["KafkaWorker"]

log = logging.getLogger(__name__)


class KafkaWorker:
    """Builds the topology on ``kafka://`` with lag reporting; ``run`` blocks."""

    def __init__(
        self,
        settings: Settings,
        broker: str,
        *,
        web_port: int | None = None,
        replication: int = 1,
        lag_interval_s: float = 10.0,
        session_timeout_s: float = 10.0,
        extra_sinks: Sequence[Sink] = (),
    ) -> None:
        if not broker.startswith("kafka://"):
            raise ValueError(f"vigil worker needs a kafka:// broker URL, got {broker!r}")
        if web_port is not None and not 1 <= web_port <= 65535:
            # Not 0 (any free port): the other workers and the acknowledge links reach
            # this worker's API by the number it was given.
            raise ValueError(f"--web-port {web_port}: give a port from 1 to 65535")
        self.settings = settings
        token = settings.web.token()  # ConfigError now, not at the first request
        self.bootstrap = bootstrap_of(broker)
        self.layout = TopicLayout(settings.app_id, settings.partitions, replication)
        ruleset, _ = load_rules(settings)
        sinks: list[Sink] = [
            JsonlSink(settings.alerts_path, **settings.alerts_sink_bounds()),
            *extra_sinks,
        ]
        if settings.console:
            sinks.append(ConsoleSink())
        data_dir = settings.data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.topology = Topology(
            app_id=settings.app_id,
            broker=broker,
            partitions=settings.partitions,
            ruleset=ruleset,
            sinks=sinks,
            data_dir=data_dir,
            lateness_ms=settings.lateness_ms,
            tick_interval_s=settings.silence_tick_s,
            corroboration_idle_s=settings.corroboration_idle_s,
            corroboration_history_s=settings.corroboration_history_s,
            web_port=web_port if web_port is not None else settings.web_port,
            replication=replication,
        )
        # A dead worker's partitions move after this long without a heartbeat.
        self.topology.app.conf.broker_session_timeout = session_timeout_s
        #: The elected dispatcher (``engine.runtime.dispatch.kafka``) with ``dispatch:``.
        self.dispatch = (
            KafkaDispatch(settings, self.topology, self.bootstrap)
            if settings.dispatch is not None
            else None
        )
        if self.dispatch is not None:
            self.dispatch.install()
        self.lag = LagMonitor(self.topology)
        self.lag.install(lag_interval_s)
        #: ``/metrics``, ``/healthz``, ``/readyz``, ``/vigil/status`` on the web port.
        self.observer = Observer(self.topology, settings, token=token)
        if self.topology.app.conf.web_enabled:
            self.observer.install()

    def run(self, loglevel: str = "info") -> None:
        """Create the topics if missing, then run until SIGTERM/SIGINT (exits the process)."""
        created = asyncio.run(ensure_topics(self.bootstrap, self.layout))
        if self.dispatch is not None:
            asyncio.run(
                ensure_dispatch_topics(self.bootstrap, self.layout.app_id, self.layout.replication)
            )
        if created:
            log.info("created topics: %s", ", ".join(created))
        worker = faust.Worker(
            self.topology.app, loglevel=loglevel, quiet=True, redirect_stdouts=False
        )
        worker.execute_from_commandline()

"""``vigil run``: the gateway's long-lived service on the embedded transport.

One process: MQTT ingest -> the topology -> the dispatcher, on ``local://<data_dir>``.
SIGTERM or SIGINT stops it cleanly: ingest disconnects first (what it did not
acknowledge, the broker redelivers), the agents finish the batch in hand, the consumer
commits offsets with the kernel checkpoints. A restart resumes from there.

A long-lived task that fails (the ingest, a timer) ends the process with exit status 1
and its traceback in the log, through Faust's crash of the app: a supervisor restarts it.
A gateway that stayed up without ingest would look alive and lose every reading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import faust

from connectors.mqtt.client import MqttIngest
from connectors.sinks.base import Sink
from connectors.sinks.console import ConsoleSink
from connectors.sinks.jsonl import JsonlSink
from engine.contracts.alerts import AlertEvent, pack_lines
from engine.contracts.ruleset import RuleSet
from engine.evaluation.broker_drops import BrokerDropAlerts
from engine.runtime.config import Settings
from engine.runtime.storage import MB, Limits, StorageGuard
from engine.runtime.topology import Topology
from engine.runtime.transport.integrity import verify
from engine.runtime.transport.local import Transport as LocalTransport
from engine.runtime.transport.retention import cap_topic, enforce_retention
from rules.api import load_ruleset
from rules.errors import RulesInvalid
from rules.registry import load_registry

__all__ = ["Gateway", "load_rules"]

log = logging.getLogger(__name__)

#: How often the embedded log's retention is enforced (seconds).
RETENTION_INTERVAL_S = 600.0
#: How often the dead-letter topic's size cap is enforced (seconds): a flood of garbage
#: grows it far faster than age does.
DEAD_LETTER_CAP_INTERVAL_S = 60.0
#: How often a broker-drops alert is checked for resolving (seconds).
BROKER_DROPS_CHECK_S = 30.0


def load_rules(settings: Settings) -> tuple[RuleSet, dict[str, frozenset[str]]]:
    """Compile the configured rules; returns them with the registry's station ids and
    the metrics each reports.

    Raises ``rules.errors.RulesInvalid`` with ``file:line:col`` lines.
    """
    registry = load_registry(settings.stations)
    compiled = load_ruleset(list(settings.rules), registry)
    return compiled.ruleset, {s.id: frozenset(s.metrics) for s in registry.stations}


class Gateway:
    """Wires settings into a topology with MQTT ingest and runs it as a Faust worker."""

    def __init__(self, settings: Settings, *, extra_sinks: Sequence[Sink] = ()) -> None:
        self.settings = settings
        ruleset, stations = load_rules(settings)
        sinks: list[Sink] = [
            JsonlSink(settings.alerts_path, **settings.alerts_sink_bounds()),
            *extra_sinks,
        ]
        if settings.console:
            sinks.append(ConsoleSink())
        data_dir = settings.data_dir.resolve()
        # Before anything runs on the log: never evaluate a damaged one as if it were whole.
        report = verify(data_dir)  # raises LogDamaged
        log.info("log checked: %d records, whole", sum(report.records.values()))
        self.topology = Topology(
            app_id=settings.app_id,
            broker=f"local://{data_dir}",
            partitions=settings.partitions,
            ruleset=ruleset,
            sinks=sinks,
            data_dir=data_dir,
            lateness_ms=settings.lateness_ms,
            tick_interval_s=settings.silence_tick_s,
            corroboration_idle_s=settings.corroboration_idle_s,
            web_port=settings.web_port,
        )
        options = settings.mqtt.options(
            settings.batch.max_readings,
            settings.batch.linger_ms,
            settings.storage.max_payload_bytes,
        )
        self.broker_drops = BrokerDropAlerts(
            gateway=options.client_id,
            broker=f"{options.host}:{options.port}",
            send=self._send_alerts,
            state_path=data_dir / "broker-drops.json",
        )
        self.ingest = MqttIngest(
            options,
            produce=self.topology.produce,
            dead_letter=self.topology.send_dead_letter,
            known_stations=stations,
            on_broker_drops=self.broker_drops.observe,
            admission=settings.ingest.admission(),
        )
        storage = settings.storage
        self.storage = StorageGuard(
            data_dir=data_dir,
            limits=Limits(
                data_dir_max=int(storage.data_dir_max_mb * MB),
                min_free=int(storage.min_free_mb * MB),
                warn_fraction=storage.warn_fraction,
            ),
            gateway=options.client_id,
            ingest=self.ingest,
            send=self._send_alerts,
        )
        app = self.topology.app
        app.task(self._run_ingest)
        app.timer(storage.check_interval_s)(self.storage.check)
        app.timer(settings.reload_interval_s)(self._check_reload)
        app.timer(BROKER_DROPS_CHECK_S)(self.broker_drops.check_clear)
        app.timer(RETENTION_INTERVAL_S)(self._enforce_retention)
        app.timer(DEAD_LETTER_CAP_INTERVAL_S)(self._cap_dead_letters)
        app.on_before_shutdown.connect(self._stop_ingest)
        self._watched = self._mtimes()
        self.reload_errors: list[str] = []

    def _mtimes(self) -> dict[str, float]:
        paths = (self.settings.stations, *self.settings.rules)
        return {str(p): p.stat().st_mtime_ns if p.exists() else -1 for p in paths}

    async def _enforce_retention(self) -> None:
        transport = self.topology.app.transport
        if isinstance(transport, LocalTransport):
            retention_ms = int(self.settings.retention_hours * 3_600_000)
            now_ms = int(time.time() * 1000)
            await asyncio.to_thread(enforce_retention, transport.log, retention_ms, now_ms)

    async def _cap_dead_letters(self) -> None:
        transport = self.topology.app.transport
        if isinstance(transport, LocalTransport):
            dead_letter = self.topology.dead_letter.get_topic_name()
            cap = int(self.settings.storage.dead_letter_max_mb * MB)
            await asyncio.to_thread(cap_topic, transport.log, dead_letter, cap)

    async def _check_reload(self) -> None:
        """Hot reload: swap in changed rule or station files once they validate."""
        mtimes = self._mtimes()
        if mtimes == self._watched:
            return
        self._watched = mtimes
        try:
            ruleset, stations = load_rules(self.settings)
        except RulesInvalid as exc:
            self.reload_errors = exc.lines
            for line in exc.lines:
                log.error("rules reload rejected, the running rules stay: %s", line)
            return
        except OSError as exc:
            log.error("rules reload failed, the running rules stay: %s", exc)
            return
        self.reload_errors = []
        self.topology.swap_rules(ruleset)
        self.ingest.known_stations = stations
        log.warning("rules reloaded: version %s, %d rules", ruleset.version, len(ruleset.rules))

    async def _send_alerts(self, events: list[AlertEvent]) -> None:
        """Gateway-level alerts onto the alerts topic, like the kernels' (the dispatcher
        delivers them); returns once they are durable."""
        topology = self.topology
        partition = topology.partition_for(events[0].station)
        futures = [
            await topology.alerts.send(value=record, partition=partition)
            for record in pack_lines(event.to_json() for event in events)
        ]
        for fut in futures:
            await fut

    async def _run_ingest(self) -> None:
        """The ingest, for the life of the process. If it fails, this raises: Faust logs
        the traceback and crashes the app, and the worker exits with status 1."""
        await self.storage.check()  # a start on a full disk waits, paused, for space
        await self.ingest.start()
        announce = asyncio.ensure_future(self._announce_subscribed())
        try:
            await self.ingest.join()
        except Exception as exc:
            log.critical("MQTT ingest failed (%r): the gateway stops for a restart", exc)
            raise
        finally:
            announce.cancel()

    async def _announce_subscribed(self) -> None:
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, self.ingest.subscribed.wait, 60.0):
            o = self.ingest.options
            # One plain line on stdout: what operators (and `vigil demo`) wait for.
            print(
                f"vigil: ingest subscribed to {self.ingest.template.subscription} "
                f"on {o.host}:{o.port}",
                flush=True,
            )
        else:
            log.error("MQTT: not subscribed after 60 s; still retrying")

    async def _stop_ingest(self, app: faust.App, **kwargs: Any) -> None:
        await self.ingest.stop()
        log.info("ingest stopped: %s", dict(self.ingest.counters))

    def run(self, loglevel: str = "info") -> None:
        """Run until SIGTERM/SIGINT; exits the process like any Faust worker."""
        worker = faust.Worker(
            self.topology.app, loglevel=loglevel, quiet=True, redirect_stdouts=False
        )
        worker.execute_from_commandline()

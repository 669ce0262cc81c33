"""``vigil run``: the gateway's long-lived service on the embedded transport.

One process: MQTT ingest and the SL 651 / HJ 212 servers the settings configure
(``engine.runtime.services.field``) -> the topology -> the dispatcher, on ``local://<data_dir>``.
SIGTERM or SIGINT stops it cleanly: ingest disconnects first (what it did not
acknowledge, the broker redelivers), the agents finish the batch in hand, the consumer
commits offsets with the kernel checkpoints. A restart resumes from there.

A long-lived task that fails (the ingest, a timer) ends the process with exit status 1
and its traceback in the log, through Faust's crash of the app: a supervisor restarts it.
A gateway that stayed up without ingest would look alive and lose every reading.

SIGHUP re-reads the settings file and the rule and station files (``services.reload``): the
rules, the stations and ``retention_hours`` take effect at once, other changed settings
are named in the log as needing a restart; the NB-IoT device registry store is caught
up with at once (``services.nbiot``). The rules come through ``RulesSource``
(last good set kept in the data directory). One gateway per data directory
(``datalock``); systemd's ``Type=notify`` and watchdog through ``notify``. What the
gateway knows about itself is ``Gateway.state`` (``services.state``) and
``Gateway.ingest.connection``.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust

from connectors.mqtt.pool import mqtt_ingest
from connectors.sinks.base import Sink
from connectors.sinks.console import ConsoleSink
from connectors.sinks.jsonl import JsonlSink
from engine.contracts.alerts import AlertEvent, pack_lines
from engine.evaluation.broker_drops import BrokerDropAlerts
from engine.evaluation.sequence_gaps import SequenceGapAlerts
from engine.runtime.config import Settings
from engine.runtime.dispatch.wiring import install_dispatch
from engine.runtime.logs import configure_logging, mask_secret
from engine.runtime.sending import Outgoing
from engine.runtime.services.datalock import lock_data_dir
from engine.runtime.services.field import FieldServers
from engine.runtime.services.nbiot import install_nbiot
from engine.runtime.services.notify import Notifier
from engine.runtime.services.observe import Observer
from engine.runtime.services.reload import log_rules_change, reread_settings
from engine.runtime.services.rules_source import Loaded, RulesSource
from engine.runtime.services.startup import log_startup
from engine.runtime.services.state import GatewayState
from engine.runtime.storage import MB, Limits, StorageGuard
from engine.runtime.topology import Topology
from engine.runtime.transport.integrity import verify
from engine.runtime.transport.local import Transport as LocalTransport
from engine.runtime.transport.retention import cap_topic, enforce_retention
from rules.station import Station

__all__ = ["Gateway"]

log = logging.getLogger(__name__)

#: How often the embedded log's retention is enforced (seconds).
RETENTION_INTERVAL_S = 600.0
#: How often the dead-letter topic's size cap is enforced (seconds): a flood of garbage
#: grows it far faster than age does.
DEAD_LETTER_CAP_INTERVAL_S = 60.0
#: How often a broker-drops alert is checked for resolving (seconds).
BROKER_DROPS_CHECK_S = 30.0
#: How often messages lost on the way (sequence gaps) are counted and alerted (seconds).
SEQUENCE_CHECK_S = 5.0
#: How long ingest may take to subscribe before the log says so (seconds).
SUBSCRIBE_WARN_S = 60.0


class Gateway:
    """Wires settings into a topology with MQTT ingest and runs it as a Faust worker."""

    def __init__(
        self,
        settings: Settings,
        *,
        extra_sinks: Sequence[Sink] = (),
        config_path: Path | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        """``config_path``: the settings file, re-read on SIGHUP (None: rules only).

        Raises ``datalock.DataDirInUse`` when another process runs on ``data_dir``,
        ``RulesInvalid`` when the rules do not load and no last good set exists.
        """
        # Until the event loop's own handler is installed, SIGHUP (whose default is to
        # end the process) only asks for a reload.
        signal.signal(signal.SIGHUP, lambda signum, frame: setattr(self, "_hup_pending", True))
        self._hup_pending = False
        self.settings = settings
        token = settings.web.token()  # ConfigError now, not at the first request
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        data_dir = settings.data_dir.resolve()
        self._lock = lock_data_dir(data_dir)  # before anything opens the log
        # Before anything runs on the log: never evaluate a damaged one as if it were whole.
        report = verify(data_dir)  # raises LogDamaged
        log.info("log checked: %d records, whole", sum(report.records.values()))
        self.state = GatewayState()
        self.rules = RulesSource(settings, self.state.rules)
        ruleset, _ = self.rules.start()
        stations = self._station_metrics()
        sinks: list[Sink] = [
            JsonlSink(settings.alerts_path, **settings.alerts_sink_bounds()),
            *extra_sinks,
        ]
        if settings.console:
            sinks.append(ConsoleSink())
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
            corroboration_history_s=settings.corroboration_history_s,
            web_port=settings.web_port,
        )
        self.topology.station_kinds = self.rules.station_kinds
        options = settings.mqtt.options(
            settings.batch.max_readings,
            settings.batch.linger_ms,
            settings.storage.max_payload_bytes,
        )
        mask_secret(options.password)
        self.broker_drops = BrokerDropAlerts(
            gateway=options.client_id,
            broker=f"{options.host}:{options.port}",
            send=self._send_alerts,
            state_path=data_dir / "broker-drops.json",
        )
        seq, metrics = settings.ingest, self.topology.metrics
        self.sequence_gaps = SequenceGapAlerts(
            gateway=options.client_id,
            send=self._send_alerts,
            threshold=seq.seq_alert_lost,
            window_ms=int(seq.seq_alert_window_s * 1000),
            reorder=seq.seq_reorder_window,
            reorder_wait_ms=int(seq.seq_reorder_wait_s * 1000),
            on_lost=lambda connector, n: metrics.sequence_lost.labels(connector).inc(n),
        )
        self.ingest = mqtt_ingest(
            options,
            produce=self.topology.producer("mqtt"),
            dead_letter=self.topology.send_dead_letter,
            known_stations=stations,
            on_broker_drops=self.broker_drops.observe,
            admission=settings.ingest.admission(),
            on_sequence=self.sequence_gaps.observe,
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
        assert self.rules.registry is not None  # set by a successful start
        self.field = FieldServers(
            settings,
            self.rules.registry,
            self.topology.producer("field"),
            self.topology.send_dead_letter,
            on_sequence=lambda device, serials, ms: self.sequence_gaps.observe(
                device, serials, ms, "sl651"
            ),
        )
        app = self.topology.app
        app.task(self._run_ingest)
        if self.field.servers:
            app.task(self._run_field)
        app.timer(storage.check_interval_s)(self.storage.check)
        app.timer(settings.reload_interval_s)(self._check_reload)
        app.timer(BROKER_DROPS_CHECK_S)(self.broker_drops.check_clear)
        app.timer(SEQUENCE_CHECK_S)(self.sequence_gaps.check)
        app.timer(RETENTION_INTERVAL_S)(self._enforce_retention)
        app.timer(DEAD_LETTER_CAP_INTERVAL_S)(self._cap_dead_letters)
        if self.notifier.watchdog_interval_s is not None:
            app.timer(self.notifier.watchdog_interval_s)(self._watchdog)
        app.on_before_shutdown.connect(self._stop_ingest)
        self.dispatch = (
            install_dispatch(settings, self.topology, self._stations)
            if settings.dispatch is not None
            else None
        )
        self.nbiot = (
            install_nbiot(settings, self.topology, lambda: self.rules.registry)
            if settings.nbiot
            else None
        )
        self.observer = Observer(
            self.topology,
            settings,
            ingest=self.ingest,
            sequences=self.sequence_gaps,
            nbiot=None if self.nbiot is None else self.nbiot.ingest,
            reload_errors=lambda: self.reload_errors,
            token=token,
        )
        if settings.web_port is not None:
            self.observer.install()
        self._reloading = asyncio.Lock()
        self._hup_task: asyncio.Future[None] | None = None

    @property
    def reload_errors(self) -> list[str]:
        """The ``file:line:col`` lines of the latest rejected rule load (empty: none)."""
        return self.state.rules.errors

    async def _enforce_retention(self) -> None:
        transport = self.topology.app.transport
        if isinstance(transport, LocalTransport):
            retention_ms = int(self.settings.retention_hours * 3_600_000)
            now_ms = int(time.time() * 1000)
            deleted = await asyncio.to_thread(
                enforce_retention, transport.log, retention_ms, now_ms
            )
            self.topology.metrics.retention_deleted.inc(deleted)

    async def _cap_dead_letters(self) -> None:
        transport = self.topology.app.transport
        if isinstance(transport, LocalTransport):
            dead_letter = self.topology.dead_letter.get_topic_name()
            cap = int(self.settings.storage.dead_letter_max_mb * MB)
            await asyncio.to_thread(cap_topic, transport.log, dead_letter, cap)

    async def _check_reload(self) -> None:
        """Hot reload: swap in changed rule or station files once they validate; a
        SIGHUP since the last tick re-reads the settings and the rules whatever changed."""
        async with self._reloading:
            force, self._hup_pending = self._hup_pending, False
            if force:
                log.warning("SIGHUP: reloading the settings, rules and stations")
                self._reload_settings()
                if self.nbiot is not None:
                    self.nbiot.reload()  # the device registry store, caught up now
            loaded = await asyncio.to_thread(self.rules.reload, force=force)
            if loaded is not None:
                self._install(loaded)

    def _stations(self) -> list[Station]:
        """The stations of the registry running now (none before the first load)."""
        registry = self.rules.registry
        return [] if registry is None else list(registry.stations)

    def _station_metrics(self) -> dict[str, frozenset[str]]:
        """Station id -> the metrics it reports, of the registry running now (ingest's
        admission dead-letters a reading of any other)."""
        registry = self.rules.registry
        assert registry is not None  # set by every successful load
        return {s.id: frozenset(s.metrics) for s in registry.stations}

    def _install(self, loaded: Loaded) -> None:
        ruleset, stations = loaded
        old = self.topology.ruleset
        self.topology.swap_rules(ruleset)
        old_stations = self.ingest.known_stations
        self.ingest.known_stations = self._station_metrics()
        self.topology.station_kinds = self.rules.station_kinds
        if self.rules.registry is not None:
            self.field.update(self.rules.registry)  # station identities and passwords
        log_rules_change(old, ruleset, stations, old_stations)

    def _reload_settings(self) -> None:
        """Re-read the settings file; apply what is reloadable, name the rest."""
        if self.config_path is None:
            return
        settings = reread_settings(self.settings, self.config_path)
        if settings is not self.settings:
            self.settings = self.rules.settings = settings

    def _on_sighup(self) -> None:
        self._hup_pending = True
        self._hup_task = asyncio.ensure_future(self._check_reload())  # kept: not collected

    async def _watchdog(self) -> None:
        """systemd's watchdog: this runs on the event loop, so a loop that hangs (or a
        process that stopped making progress there) misses pings and is restarted."""
        self.notifier.send(WATCHDOG=1)

    async def _send_alerts(self, events: list[AlertEvent]) -> None:
        """Gateway-level alerts onto the alerts topic, like the kernels' (the dispatcher
        delivers them), in one durable write; returns once they are durable."""
        topology = self.topology
        partition = topology.partition_for(events[0].station)
        topic = topology.alerts.get_topic_name()
        await topology.send_together(
            [
                Outgoing(topic, record, partition)
                for record in pack_lines(event.to_json() for event in events)
            ]
        )

    async def _run_ingest(self) -> None:
        """The ingest, for the life of the process. If it fails, this raises: Faust logs
        the traceback and crashes the app, and the worker exits with status 1."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        await self.storage.check()  # a start on a full disk waits, paused, for space
        # What start-up built (the Faust app, rules, registry, numba's dispatchers) lives
        # as long as the process: out of the cyclic collector's reach, so that the
        # collections a batch's allocations trigger do not walk it each time (as the
        # field servers do: ``engine.runtime.services.field``; MQTT_RESULTS.md).
        gc.collect()
        gc.freeze()
        await self.ingest.start()
        log_startup(self.settings, self.state, self.ingest)
        self.notifier.send(READY=1, STATUS="running; connecting to the MQTT broker")
        announce = asyncio.ensure_future(self._announce_subscribed())
        try:
            await self.ingest.join()
        except Exception as exc:
            log.critical("MQTT ingest failed (%r): the gateway stops for a restart", exc)
            raise
        finally:
            announce.cancel()

    async def _run_field(self) -> None:
        """The SL 651 / HJ 212 servers, for the life of the process; a failure ends it
        like an ingest failure."""
        try:
            await self.field.run()
        except Exception as exc:
            log.critical("field servers failed (%r): the gateway stops for a restart", exc)
            raise

    async def _announce_subscribed(self) -> None:
        # Polled on the loop, not waited for in a thread: a thread blocked in a wait
        # kept the process alive for up to a minute after SIGTERM.
        deadline: float | None = time.monotonic() + SUBSCRIBE_WARN_S
        while not self.ingest.subscribed.is_set():
            if deadline is not None and time.monotonic() > deadline:
                log.error("MQTT: not subscribed after %.0f s; still retrying", SUBSCRIBE_WARN_S)
                deadline = None
            await asyncio.sleep(0.05)
        o = self.ingest.options
        # One plain line on stdout: what operators (and `vigil demo`) wait for.
        print(
            f"vigil: ingest subscribed to {self.ingest.subscription} on {o.host}:{o.port}",
            flush=True,
        )
        self.notifier.send(STATUS=f"subscribed on {o.host}:{o.port}")

    async def _stop_ingest(self, app: faust.App, **kwargs: Any) -> None:
        self.notifier.send(STOPPING=1)
        await self.field.stop()
        await self.ingest.stop()
        log.info("ingest stopped: %s", dict(self.ingest.counters))
        # What start-up froze goes back to the collector, so that the interpreter's
        # shutdown finalizes it as it did before the freeze (one run of the SIGTERM test
        # under load ended in a segfault after the loop closed; cause not found).
        gc.unfreeze()

    def run(self, loglevel: str = "info") -> None:
        """Run until SIGTERM/SIGINT; exits the process like any Faust worker.

        Logging is the CLI's (``engine.runtime.logs``): Faust's worker leaves it alone.
        A gateway run without the CLI (a test's own script) gets the human format here.
        """
        if not logging.getLogger().handlers:
            level = {"crit": "CRITICAL", "warn": "WARNING"}.get(loglevel, loglevel.upper())
            configure_logging("human", level)
        # A crash in native code (numba, RocksDB, a C extension) prints every thread's
        # Python stack on stderr (the journal) instead of dying silently.
        faulthandler.enable()
        worker = faust.Worker(
            self.topology.app,
            loglevel=loglevel,
            quiet=True,
            redirect_stdouts=False,
            override_logging=False,
        )
        worker.spinner = None  # terminal escapes on stdout, which is a journal here
        worker.execute_from_commandline()

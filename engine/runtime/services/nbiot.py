"""The gateway's NB-IoT ingest (``nbiot:`` in the settings): builds
``connectors.nbiot.service.NbiotIngest`` on the topology and runs it for the life of
the process, like the MQTT ingest: if it fails, the app crashes (exit 1) for a restart.

Devices come from a YAML file (small deployments) or from the registry store
(``rules.store``, ten million devices). The store is written by other processes
(``vigil registry import``, one writer at a time under RocksDB's lock), so the gateway
never opens it for writing: it reads it through a RocksDB secondary instance with a
bounded LRU cache in front (``DeviceRegistry``) and catches up with the writer every
``nbiot.registry_refresh_s`` seconds, and at once on SIGHUP (``NbiotService.reload``).
The YAML file is followed the same way (``YamlDevices.follow``: re-read when it
changed, at once on SIGHUP; an edit that does not validate is refused with one log
line and the devices in force stay). A device registered while the gateway runs is
accepted from then on, without a restart; one removed is refused as unknown.

Readings are admitted against the gateway's station registry as it runs now
(``stations``, read per uplink, so a station reload applies at once): a device whose
station it does not have, or a metric its station does not report, is dead-lettered
and counted (``connectors.nbiot.uplink``), never taken into a log no rule reads; and
against the time bounds every connector keeps (``ingest.max_clock_skew_s``, MQTT's
``connectors.ingest.Admission``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import faust

from connectors.nbiot.devices import YamlDevices
from connectors.nbiot.products import load_products
from connectors.nbiot.service import NbiotIngest, NbiotOptions
from engine.contracts.devices import DeviceLookup
from engine.runtime.config import Settings
from engine.runtime.topology import Topology
from rules.registry import Registry
from rules.store import DeviceRegistry, StoreBusy
from rules.store.db import open_writer

__all__ = ["NbiotService", "install_nbiot", "open_devices"]

log = logging.getLogger(__name__)


@dataclass
class NbiotService:
    """What the gateway holds of its NB-IoT ingest."""

    ingest: NbiotIngest
    #: The registry store the devices come from; None: the YAML device file.
    registry: DeviceRegistry | None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def reload(self) -> None:
        """Catch up with the registry store, or re-read the YAML device file, now
        rather than at the next interval (SIGHUP)."""
        self._wake.set()


class StationMetrics:
    """``connectors.nbiot.uplink.Stations`` over the gateway's station registry: station
    id -> the metrics it reports, of the registry running now (rebuilt when a reload
    swaps it, so a call per uplink costs an identity test)."""

    def __init__(self, registry: Callable[[], Registry | None]) -> None:
        self._registry = registry
        self._seen: Registry | None = None
        self._metrics: dict[str, frozenset[str]] | None = None

    def __call__(self) -> Mapping[str, Collection[str]] | None:
        registry = self._registry()
        if registry is not self._seen:
            self._seen = registry
            self._metrics = (
                None
                if registry is None
                else {s.id: frozenset(s.metrics) for s in registry.stations}
            )
        return self._metrics


def open_devices(settings: Settings) -> tuple[DeviceLookup, DeviceRegistry | None]:
    """The settings' device lookup, and the registry store's reader when it is one.

    Raises ValueError (a device file that does not validate), StoreMissing (a
    ``devices:`` folder that holds no store)."""
    nb = settings.nbiot
    assert nb is not None
    store = nb.store(settings.data_dir.resolve())
    if store is None:
        assert nb.devices is not None
        return YamlDevices(nb.devices), None
    if nb.devices is None and not (store / "CURRENT").exists():
        # The default store, created empty: the gateway can start before the first
        # import and follow it. Busy: an import is creating it now.
        with contextlib.suppress(StoreBusy):
            open_writer(store).close()
    registry = DeviceRegistry(store, cache_size=nb.registry_cache)
    log.info("NB-IoT devices: registry store %s, %d devices", store, len(registry))
    return registry, registry


def install_nbiot(
    settings: Settings,
    topology: Topology,
    stations: Callable[[], Registry | None] = lambda: None,
) -> NbiotService:
    """Create the ingest and register its task and its stop with the topology's app.
    ``stations``: the gateway's station registry running now, which readings must fit
    (None: any station and metric is taken).

    Raises ValueError (device or product files that do not validate), StoreMissing or
    ConfigError (a token variable that is not set)."""
    nb = settings.nbiot
    assert nb is not None
    options = NbiotOptions(
        host=nb.host,
        coap_port=nb.coap_port,
        udp_port=nb.udp_port,
        push_port=nb.push_port,
        ctwing_token=nb.token(nb.ctwing_token_env),
        onenet_token=nb.token(nb.onenet_token_env),
        state_dir=settings.data_dir.resolve() / "nbiot",
        max_readings=settings.batch.max_readings,
        linger_ms=settings.batch.linger_ms,
        unknown_capacity=nb.unknown_capacity,
    )
    products = load_products(*nb.products)
    devices, registry = open_devices(settings)
    ingest = NbiotIngest(
        options,
        devices,
        products,
        produce=topology.producer("nbiot"),
        dead_letter=functools.partial(topology.send_dead_letter, quiet=True),
        stations=StationMetrics(stations),
        admission=settings.ingest.admission(),
    )
    service = NbiotService(ingest, registry)
    tasks: list[asyncio.Future[None]] = []

    async def run() -> None:
        await ingest.start()
        # One plain line on stdout, like MQTT's: what operators and tests wait for.
        print(f"vigil: nbiot ingest listening {ingest.describe()}", flush=True)
        tasks.append(asyncio.ensure_future(ingest.join()))
        source = registry if registry is not None else devices
        assert isinstance(source, DeviceRegistry | YamlDevices)
        tasks.append(asyncio.ensure_future(source.follow(nb.registry_refresh_s, service._wake)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # raises what ended it
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.critical("NB-IoT ingest failed (%r): the gateway stops for a restart", exc)
            raise

    async def stop(app: faust.App, **kwargs: Any) -> None:
        for task in tasks:
            task.cancel()
        await ingest.stop()
        if registry is not None:
            # After the ingest: no lookup runs any more; waits for a catch-up in flight.
            await asyncio.to_thread(registry.close)
        log.info(
            "NB-IoT ingest stopped: %s; uplinks %s",
            dict(ingest.counters),
            {f"{path} {outcome}": n for (path, outcome), n in ingest.uplinks.items()},
        )

    topology.app.task(run)
    topology.app.on_before_shutdown.connect(stop)
    return service

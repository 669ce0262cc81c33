"""The gateway's NB-IoT ingest (``nbiot:`` in the settings): builds
``connectors.nbiot.service.NbiotIngest`` on the topology and runs it for the life of
the process, like the MQTT ingest: if it fails, the app crashes (exit 1) for a restart."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import faust

from connectors.nbiot.devices import YamlDevices
from connectors.nbiot.products import load_products
from connectors.nbiot.service import NbiotIngest, NbiotOptions
from engine.runtime.config import Settings
from engine.runtime.topology import Topology

__all__ = ["install_nbiot"]

log = logging.getLogger(__name__)


def install_nbiot(settings: Settings, topology: Topology) -> NbiotIngest:
    """Create the ingest and register its task and its stop with the topology's app.

    Raises ValueError (device or product files that do not validate) or ConfigError
    (a token variable that is not set)."""
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
    ingest = NbiotIngest(
        options,
        YamlDevices(nb.devices),
        load_products(*nb.products),
        produce=topology.producer("nbiot"),
        dead_letter=functools.partial(topology.send_dead_letter, quiet=True),
    )

    async def run() -> None:
        await ingest.start()
        # One plain line on stdout, like MQTT's: what operators and tests wait for.
        print(f"vigil: nbiot ingest listening {ingest.describe()}", flush=True)
        try:
            await ingest.join()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.critical("NB-IoT ingest failed (%r): the gateway stops for a restart", exc)
            raise

    async def stop(app: faust.App, **kwargs: Any) -> None:
        await ingest.stop()
        log.info("NB-IoT ingest stopped: %s", dict(ingest.counters))

    topology.app.task(run)
    topology.app.on_before_shutdown.connect(stop)
    return ingest

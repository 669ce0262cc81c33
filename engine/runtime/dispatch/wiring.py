"""``dispatch:`` in the settings -> a ``DispatchService`` running in the gateway.

``install_dispatch(settings, topology)`` reads the routing file, builds its receivers
(secrets from the environment: a missing one fails at start), opens the outbox in
``<data_dir>/dispatch`` and hooks the service into the topology: every alert event of
the alerts topic (``Topology.alert_listeners``), the state stored before each offset
commit, a tick on the wall clock, one delivery loop per receiver, and the API on the
web port. One dispatcher for the whole gateway, not one per partition: a basin's
gauges hash to different partitions, and its group must gather them all. The duty
room's station board is read back from the telemetry log first (``board.py``): after a
restart the page shows what it showed before, not an empty table until readings come.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from connectors.sinks.common import ReceiverConfigError
from connectors.sinks.notify_file import NotificationConsole, NotificationFile
from connectors.sinks.receivers import build_receiver
from engine.contracts.notification import Receiver
from engine.dispatch.clock import SystemClock
from engine.dispatch.config import DispatchConfig, load_dispatch_config
from engine.runtime.config import ConfigError, Settings
from engine.runtime.dispatch.api import install_api
from engine.runtime.dispatch.board import StationBoard
from engine.runtime.dispatch.console import install_console
from engine.runtime.dispatch.links import AckLinks
from engine.runtime.dispatch.outbox import Outbox
from engine.runtime.dispatch.service import DispatchService
from engine.runtime.topology import Topology
from engine.runtime.transport.local import Transport as LocalTransport
from rules.station import Station

__all__ = ["build_receivers", "install_dispatch", "links_of"]

log = logging.getLogger(__name__)


def build_receivers(config: DispatchConfig) -> dict[str, Receiver]:
    """Every receiver of the routing file; ConfigError listing every problem. A
    ``jsonl`` receiver's relative ``path`` is against the routing file's folder."""
    out: dict[str, Receiver] = {}
    problems: list[str] = []
    base = Path(config.file).resolve().parent
    for name, spec in config.receivers.items():
        settings = spec.settings
        try:
            if spec.type == "jsonl":
                if not isinstance(settings.get("path"), str):
                    raise ReceiverConfigError(name, [("path", "a file path is required")])
                out[name] = NotificationFile(name, base / settings["path"])
            elif spec.type == "console":
                out[name] = NotificationConsole(name, settings.get("lang", "en"))
            else:
                out[name] = build_receiver(name, {"type": spec.type, **settings})
        except ReceiverConfigError as exc:
            problems += [f"{config.file}: {line}" for line in str(exc).splitlines()]
    if problems:
        raise ConfigError("\n".join(problems))
    return out


def links_of(settings: Settings, web_port: int) -> AckLinks | None:
    """The acknowledge links, or None without ``dispatch.link_secret_env``. They point
    at ``dispatch.public_url``, else at ``web_port`` on loopback: the port this process
    serves on (a worker's ``--web-port``), which need not be the settings' ``web_port``."""
    d = settings.dispatch
    assert d is not None
    if d.link_secret_env is None:
        return None
    secret = os.environ.get(d.link_secret_env)
    if not secret:
        raise ConfigError(
            f"dispatch.link_secret_env: environment variable {d.link_secret_env} is not set"
        )
    base = d.public_url or f"http://127.0.0.1:{web_port}"
    return AckLinks(secret.encode(), base, int(d.link_ttl_s * 1000))


def install_dispatch(
    settings: Settings, topology: Topology, stations: Callable[[], Iterable[Station]]
) -> DispatchService:
    """Build the service and hook it into ``topology`` (embedded transport only), with
    its REST API and the duty room's page (``stations``: the registry running now).
    Raises ``RulesInvalid`` for a bad routing file, ``ConfigError`` otherwise."""
    d = settings.dispatch
    assert d is not None
    config = load_dispatch_config(d.routes)
    receivers = build_receivers(config)
    links = links_of(settings, int(topology.app.conf.web_port))
    outbox = Outbox(settings.data_dir.resolve() / "dispatch")
    service = DispatchService(
        config, outbox, receivers, SystemClock(), links=links,
        retry_initial_s=d.retry_initial_s, retry_max_s=d.retry_max_s,
        forget_after_ms=int(d.forget_after_s * 1000),
    )  # fmt: skip
    app = topology.app
    topology.alert_listeners.append(service.receive)
    transport = app.transport
    assert isinstance(transport, LocalTransport)
    transport.before_commit.append(service.flush)

    delivery: list[asyncio.Task[None]] = []

    async def deliver() -> None:
        task = asyncio.current_task()
        assert task is not None
        delivery.append(task)
        await service.run_forever(d.tick_s)

    async def stop(app: Any, **kwargs: Any) -> None:
        await service.stop(delivery[0] if delivery else None)

    app.task(deliver)
    app.on_before_shutdown.connect(stop)
    install_api(app.web.web_app.router, service)
    board = StationBoard()
    started = time.monotonic()
    readings = board.read_back(
        transport.log, topology.telemetry.get_topic_name(), str(app.conf.id),
        int(time.time() * 1000),
    )  # fmt: skip
    log.info(
        "station board: %d readings read back from the log in %.1f s",
        readings, time.monotonic() - started,
    )  # fmt: skip
    topology.batch_listeners.append(board.observe)
    install_console(app.web.web_app.router, service, stations, board=board)
    return service

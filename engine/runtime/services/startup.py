"""The gateway's first lines: what it listens on and what it runs, in one screen.

An operator who starts ``vigil run`` (or reads the journal after a restart) sees where
readings come from, which rules and stations from which files, where alerts and data
go and which web port serves, without reading the settings file. It is written at INFO
on the ``vigil.startup`` logger, which shows it even under ``--loglevel warn``.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from connectors.mqtt.pool import Ingest
from engine.runtime.config import Settings
from engine.runtime.services.state import GatewayState

__all__ = ["log_startup", "startup_summary"]

log = logging.getLogger("vigil.startup")
log.setLevel(logging.INFO)  # shown under --loglevel warn too: it is one record


def log_startup(settings: Settings, state: GatewayState, ingest: Ingest) -> None:
    log.info(startup_summary(settings, state, ingest))


def _version() -> str:
    try:
        return version("vigil")
    except PackageNotFoundError:
        return "unknown"


def startup_summary(settings: Settings, state: GatewayState, ingest: Ingest) -> str:
    """The summary as one multi-line message (one record, one JSON object)."""
    o = ingest.options
    r = state.rules
    tls = "TLS" if o.ca_file else "plain TCP"
    user = f", user {o.username}" if o.username else ""
    source = "the configured files" if r.source == "files" else "the LAST GOOD copy"
    web = f"port {settings.web_port}" if settings.web_port else "off (web_port not set)"
    lines = [
        f"vigil {_version()} gateway starting",
        f"  MQTT      {o.host}:{o.port} ({tls}{user}), client id {o.client_id}, "
        f"subscribing to {ingest.subscription} at QoS 1",
        f"  rules     {r.count} rules, version {r.version}, from {source}: "
        + ", ".join(str(p) for p in settings.rules),
        f"  stations  {r.stations} from {settings.stations}",
        f"  data      {settings.data_dir.resolve()} ({settings.partitions} partitions, "
        f"retention {settings.retention_hours:g} h)",
        f"  alerts    {settings.alerts_path}" + (" and the console" if settings.console else ""),
        f"  web       {web}",
    ]
    if r.errors:
        lines.append(f"  RULE FILES REJECTED ({len(r.errors)} problems, logged above)")
    if r.warnings:
        lines.append(f"  rule warnings: {len(r.warnings)} (logged above)")
    return "\n".join(lines)

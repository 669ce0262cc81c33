"""The gateway's field-protocol servers: SL 651 and HJ 212 over TCP, as the settings
file configures them (``sl651:``, ``hj212:``), with station identities from the registry.

Each configured server is a ``connectors.fieldserver.FieldServer`` feeding the same
``produce`` and ``dead_letter`` as MQTT ingest. Identities (SL 651 address, HJ 212 MN ->
Vigil station and password) are built from the registry's ``sl651:`` / ``hj212:``
entries at start, and again on every registry reload; a reload whose passwords cannot
be read (an unset ``password_env``) keeps the identities that run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections import Counter

from connectors.fieldserver import FieldServer, Limits
from connectors.fieldsession import Identity
from connectors.hj212.server import Hj212Framing, Hj212Session
from connectors.ingest import DeadLetter, Produce
from connectors.sl651 import batch as sl651_batch
from connectors.sl651.server import Sequences, Sl651Framing, Sl651Session
from engine.runtime.config import ConfigError, Settings
from engine.runtime.config_sections import FieldServerSettings
from rules.registry import Registry

__all__ = ["FieldServers", "identities"]

log = logging.getLogger(__name__)


def identities(registry: Registry) -> tuple[dict[str, Identity], dict[str, Identity]]:
    """(SL 651 address -> identity, HJ 212 MN -> identity); ConfigError naming each
    ``password_env`` that is not set."""
    sl651: dict[str, Identity] = {}
    hj212: dict[str, Identity] = {}
    missing = []
    for s in registry:
        if s.sl651 is not None:
            sl651[s.sl651.address.upper()] = Identity(s.id, s.sl651.password.upper())
        if s.hj212 is not None:
            password = s.hj212.password
            if s.hj212.password_env is not None:
                password = os.environ.get(s.hj212.password_env)
                if password is None:
                    missing.append(
                        f"{registry.file}: station {s.id}: hj212.password_env: "
                        f"environment variable {s.hj212.password_env} is not set"
                    )
                    continue
            assert password is not None
            hj212[s.hj212.mn] = Identity(s.id, password)
    if missing:
        raise ConfigError("\n".join(missing))
    return sl651, hj212


def _limits(s: FieldServerSettings, max_readings: int, linger_ms: int) -> Limits:
    return Limits(
        max_frame_bytes=s.max_frame_bytes,
        idle_timeout_s=s.idle_timeout_s,
        frame_timeout_s=s.frame_timeout_s,
        max_connections=s.max_connections,
        max_per_address=s.max_per_address,
        max_garbage_bytes=s.max_garbage_bytes,
        max_readings=max_readings,
        linger_ms=linger_ms,
    )


def _freeze_start_up_heap() -> None:
    """What start-up built (rules, registry, the Faust app, numba's dispatchers: some
    200,000 objects) lives as long as the process: moved out of the cyclic collector's
    reach, so that the full collections a busy server's allocations trigger (a field
    connection's transport, streams and task; a batch's blocks) do not walk it each time.
    Measured on ``bench/field_e2e.py``: 11 % less gateway CPU per frame (FIELD_RESULTS.md).
    Objects made later are collected as before."""
    gc.collect()
    gc.freeze()


class FieldServers:
    """The configured servers; ``run`` for the life of the process, ``stop`` at the end."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        produce: Produce,
        dead_letter: DeadLetter,
        on_sequence: Sequences | None = None,
    ) -> None:
        """``on_sequence``: SL 651 report serials (``Sl651Session``), for gap counting."""
        self.sl651_ids, self.hj212_ids = identities(registry)
        #: (Vigil station, element or code) -> values received with no Vigil metric.
        self.unmapped: Counter[tuple[str, str]] = Counter()
        self.servers: list[FieldServer] = []
        batch = settings.batch
        if settings.sl651 is not None:
            s = settings.sl651
            sl651_batch.warm()  # compiled (or loaded from numba's cache) before traffic
            self.servers.append(
                FieldServer(
                    "sl651",
                    s.host,
                    s.port,
                    Sl651Framing(),
                    lambda: Sl651Session(
                        lambda: self.sl651_ids, self.unmapped, on_sequence=on_sequence
                    ),
                    produce,
                    dead_letter,
                    _limits(s, batch.max_readings, batch.linger_ms),
                )
            )
        if settings.hj212 is not None:
            s = settings.hj212
            self.servers.append(
                FieldServer(
                    "hj212",
                    s.host,
                    s.port,
                    Hj212Framing(),
                    lambda: Hj212Session(lambda: self.hj212_ids, self.unmapped),
                    produce,
                    dead_letter,
                    _limits(s, batch.max_readings, batch.linger_ms),
                )
            )

    def update(self, registry: Registry) -> None:
        """A reloaded registry's identities; on an unset password_env the old ones stay."""
        try:
            self.sl651_ids, self.hj212_ids = identities(registry)
        except ConfigError as exc:
            for line in str(exc).splitlines():
                log.error("station identities not reloaded, the running ones stay: %s", line)

    async def run(self) -> None:
        """Listen, announce each server on stdout, and wait: raises if one fails."""
        if not self.servers:
            return
        _freeze_start_up_heap()
        for server in self.servers:
            await server.start()
            # One plain line on stdout: what operators, the demo and the tests wait for.
            print(f"vigil: {server.name} listening on {server.host}:{server.port}", flush=True)
        await asyncio.gather(*(server.join() for server in self.servers))

    async def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.stop()
            log.info("%s server stopped: %s", server.name, dict(server.counters))
        if self.unmapped:
            log.warning("values with no Vigil metric, not ingested: %s", dict(self.unmapped))

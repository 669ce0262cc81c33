"""Devices for small deployments: a YAML file of devices, as a ``DeviceLookup``.

The ten-million-device registry replaces this for large fleets; both give
``engine.contracts.devices.Device`` by identity. The file::

    devices:
      - identity: "861234567890123"      # IMEI, IMSI or the platform's device id
        station: HZ001
        product: waterlog-v1
        key_hex: 00112233...              # optional: per-device HMAC key (secret!)
        metrics: {water_depth: water_level}
        aliases: ["a1b2c3"]              # optional: the platforms' device ids

The file holds device keys: keep it readable by the gateway's user only.

The running gateway follows the file like the registry store (``follow``: every
``nbiot.registry_refresh_s`` and at once on SIGHUP): an edit that validates replaces
the device set at once (one log line: how many devices, added and removed); an edit
that does not is refused with one log line and the devices in force stay.

``canonical_identity`` turns the names devices give themselves (an LwM2M endpoint
``urn:imei:861234567890123``, ``urn:imei-imsi:<imei>-<imsi>``, a SenML base name with a
trailing ``:`` or ``/``) into the identity the registry is keyed by.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.nbiot.yaml_file import load_yaml
from engine.contracts.devices import Device

__all__ = ["YamlDevices", "canonical_identity"]

log = logging.getLogger(__name__)

_URN_PREFIXES = ("urn:dev:imei:", "urn:imei:", "urn:dev:imsi:", "urn:imsi:")


def canonical_identity(name: str) -> str:
    """The registry identity a device's self-given name stands for."""
    name = name.rstrip(":/")
    low = name.lower()
    if low.startswith("urn:imei-imsi:"):
        return name[len("urn:imei-imsi:") :].split("-", 1)[0]
    for prefix in _URN_PREFIXES:
        if low.startswith(prefix):
            return name[len(prefix) :]
    return name


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    identity: str = Field(min_length=1, max_length=64)
    station: str = Field(min_length=1)
    product: str = Field(min_length=1)
    key_hex: str | None = None
    metrics: Mapping[str, str] = Field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @field_validator("key_hex")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and len(bytes.fromhex(v)) < 16:
            raise ValueError("a device key needs at least 16 bytes (32 hex digits)")
        return v


class _File(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    devices: tuple[_Entry, ...]


def _read(path: Path) -> dict[str, Device]:
    """The file's devices by identity and alias; ValueError with ``file: ...`` lines."""
    parsed = load_yaml(path, _File)
    by_identity: dict[str, Device] = {}
    for e in parsed.devices:
        key = bytes.fromhex(e.key_hex) if e.key_hex else None
        device = Device(e.identity, e.station, e.product, key, dict(e.metrics))
        for name in (e.identity, *e.aliases):
            if name in by_identity:
                raise ValueError(f"{path}: device identity {name!r} appears twice")
            by_identity[name] = device
    return by_identity


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file from the one read (None: it cannot be stat'ed)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class YamlDevices:
    """A ``DeviceLookup`` over a YAML file (ValueError with ``file: devices.N.field:
    message`` lines when it does not validate at start), re-read while the gateway
    runs by ``reload``/``follow``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature = _signature(path)
        self._by_identity = _read(path)
        #: The signature of the last edit refused (None among them: the file was gone),
        #: whose line is not written again; empty: none refused since the last read.
        self._refused: tuple[tuple[int, int, int] | None, ...] = ()

    def lookup(self, identity: str) -> Device | None:
        return self._by_identity.get(identity)

    def __len__(self) -> int:
        return len({id(d) for d in self._by_identity.values()})

    def reload(self, force: bool = False) -> bool:
        """Re-read the file if it changed since it was read (``force``: whatever its
        signature says, as on SIGHUP); True when the device set was replaced. An edit
        that does not validate is logged once (per edit, or per forced reload) and
        the devices in force stay. Reads the file: call it off the event loop, then
        nothing but the swap of one dict touches what ``lookup`` reads."""
        signature = _signature(self.path)
        if not force and (signature == self._signature or signature in self._refused):
            return False
        try:
            by_identity = _read(self.path)
        except ValueError as exc:
            self._refused = (signature,)
            problems = "; ".join(str(exc).splitlines())
            log.error(
                "NB-IoT device file not reloaded, the %d devices in force stay: %s",
                len(self),
                problems,
            )
            return False
        old = {d.identity for d in self._by_identity.values()}
        new = {d.identity for d in by_identity.values()}
        changed = by_identity != self._by_identity
        self._by_identity, self._signature, self._refused = by_identity, signature, ()
        if changed:
            added, removed = sorted(new - old), sorted(old - new)
            log.warning(
                "NB-IoT device file %s reloaded: %d devices (were %d; added: %s; removed: %s)",
                self.path,
                len(new),
                len(old),
                _names(added),
                _names(removed),
            )
        return changed

    async def follow(self, interval_s: float = 1.0, wake: asyncio.Event | None = None) -> None:
        """``reload`` every ``interval_s`` seconds, and forced whenever ``wake`` is set
        (SIGHUP), until cancelled; the file is read in a thread."""
        wake = wake or asyncio.Event()
        while True:
            try:
                async with asyncio.timeout(interval_s):
                    await wake.wait()
            except TimeoutError:
                pass
            force = wake.is_set()
            wake.clear()
            await asyncio.to_thread(self.reload, force)


def _names(ids: list[str], most: int = 10) -> str:
    """Up to ``most`` identities, and how many more."""
    if not ids:
        return "none"
    more = f" and {len(ids) - most} more" if len(ids) > most else ""
    return ", ".join(ids[:most]) + more

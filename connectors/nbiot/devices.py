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

``canonical_identity`` turns the names devices give themselves (an LwM2M endpoint
``urn:imei:861234567890123``, ``urn:imei-imsi:<imei>-<imsi>``, a SenML base name with a
trailing ``:`` or ``/``) into the identity the registry is keyed by.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.nbiot.yaml_file import load_yaml
from engine.contracts.devices import Device

__all__ = ["YamlDevices", "canonical_identity"]

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


class YamlDevices:
    """A ``DeviceLookup`` over a YAML file, read once (ValueError with ``file:
    devices.N.field: message`` lines when it does not validate)."""

    def __init__(self, path: Path) -> None:
        parsed = load_yaml(path, _File)
        self._by_identity: dict[str, Device] = {}
        for e in parsed.devices:
            key = bytes.fromhex(e.key_hex) if e.key_hex else None
            device = Device(e.identity, e.station, e.product, key, dict(e.metrics))
            for name in (e.identity, *e.aliases):
                if name in self._by_identity:
                    raise ValueError(f"{path}: device identity {name!r} appears twice")
                self._by_identity[name] = device

    def lookup(self, identity: str) -> Device | None:
        return self._by_identity.get(identity)

    def __len__(self) -> int:
        return len(self._by_identity)

"""The device contract: who a device is, for the ingest paths that hear from devices
rather than from stations (NB-IoT over CoAP/UDP, the carriers' HTTP push).

A device is known by the identity its path gives (IMEI, IMSI or the platform's device
id, as a string) and belongs to one station of the registry. Its ``product`` names the
declarative decoder of its payloads; ``metrics`` renames the product's fields to the
station's metrics (empty: the product's names are the metrics). ``key`` is the
per-device secret for payload authentication (None: the device authenticates no other
way than through its platform).

``DeviceLookup`` is what an ingest path needs: a lookup by identity, O(1), safe to call
on the event loop, reflecting registry updates made while the gateway runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Device", "DeviceLookup"]


@dataclass(frozen=True, slots=True)
class Device:
    identity: str
    station: str
    product: str
    key: bytes | None = None
    metrics: Mapping[str, str] = field(default_factory=dict)


class DeviceLookup(Protocol):
    def lookup(self, identity: str) -> Device | None:
        """The device with this identity, or None when it is not registered."""
        ...

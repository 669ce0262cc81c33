"""The device and station registry store: ten million devices in an embedded RocksDB.

- ``rules.store.db``: the key layout and how the store is opened (one writer, any readers).
- ``rules.store.importer``: ``vigil registry import devices.csv``, row by row.
- ``rules.store.lookup``: ``DeviceRegistry``, the ingest paths' ``DeviceLookup``.
- ``rules.store.stations``: station metadata at scale, read by ``load_registry``.
- ``rules.store.identity``: IMEI, IMSI and device-id checks.
"""

from rules.store.db import StoreBusy, StoreMissing, store_stats
from rules.store.identity import identity_problem, make_imei
from rules.store.importer import ImportReport, import_devices, remove_devices
from rules.store.lookup import DeviceRegistry, decode_device, read_device
from rules.store.stations import (
    put_stations,
    remove_stations,
    station_documents,
    station_ids,
    station_metrics,
)

__all__ = [
    "DeviceRegistry",
    "ImportReport",
    "StoreBusy",
    "StoreMissing",
    "decode_device",
    "identity_problem",
    "import_devices",
    "make_imei",
    "put_stations",
    "read_device",
    "remove_devices",
    "remove_stations",
    "station_documents",
    "station_ids",
    "station_metrics",
    "store_stats",
]

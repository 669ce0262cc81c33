"""The fleet of ``bench/nbiot_e2e.py``: waterlogging sensors (product ``waterlog-v1``)
on the demo gauges, written straight into a registry store, and ``DeviceRegistry.lookup``
measured on that store against its floor (``dict.get``, the raw RocksDB read) and what an
uplink's decode costs.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from rocksdict import WriteBatch

from bench.harness import rss_mib
from connectors.nbiot.products import load_products
from rules.store import DeviceRegistry, make_imei
from rules.store.db import DEVICE, device_record, fast_writes, open_reader, open_writer, write_meta
from simulators.nbiot_fleet import encode

__all__ = ["WATERLOG", "fill_store", "imei", "lookups"]

STATIONS = ("HZ001", "HZ002", "HZ003")
WATERLOG = load_products().get("waterlog-v1")


def imei(i: int) -> str:
    """The IMEI (a valid one, distinct for each ``i``) of the fleet's device number ``i``."""
    return make_imei(86100000 + i // 1_000_000, i % 1_000_000)


def fill_store(store: Path, n: int) -> float:
    """``n`` devices into the store; returns the seconds it took."""
    start = time.perf_counter()
    db = open_writer(store)
    try:
        batch = WriteBatch(raw_mode=True)
        for i in range(n):
            record = device_record(STATIONS[i % 3], "waterlog-v1", None, {}, 1, i + 2)
            batch.put(DEVICE + imei(i).encode(), record)
            if i % 50_000 == 49_999:
                db.write(batch, fast_writes())
                batch = WriteBatch(raw_mode=True)
        write_meta(batch, "devices", n)
        db.write(batch, fast_writes())
        db.flush()
    finally:
        db.close()
    return time.perf_counter() - start


def per_call_us(fn: Any, items: list[Any]) -> float:
    """Microseconds per ``fn(x)`` over ``items``, on average."""
    start = time.perf_counter()
    for x in items:
        fn(x)
    return (time.perf_counter() - start) / len(items) * 1e6


def lookups(store: Path, n_devices: int, n: int = 50_000) -> dict[str, float]:
    """µs per lookup (and lookups/s) in the store of ``n_devices`` (``fill_store``), over
    ``n`` of them: misses, hits, unknown identities, beside the floors (``dict.get``, the
    raw RocksDB read) and an uplink's decode; and the reader's added RSS (MiB)."""
    n = min(n, n_devices)
    rng = random.Random(2)
    ids = [imei(i) for i in rng.sample(range(n_devices), n)]
    unknown = [make_imei(86900000, i) for i in range(n)]
    out: dict[str, float] = {}
    before = rss_mib()
    with DeviceRegistry(store, cache_size=10_000) as reg:
        out["miss_us"] = per_call_us(reg.lookup, ids)
        hot = ids[:5_000]
        per_call_us(reg.lookup, hot)
        out["hit_us"] = per_call_us(reg.lookup, hot * 10)
        out["unknown_us"] = per_call_us(reg.lookup, unknown)
        out["reader_rss_mib_added"] = rss_mib() - before
    raw = open_reader(store)
    try:
        keys = [DEVICE + i.encode() for i in rng.sample(ids, len(ids))]
        out["rocksdb_get_us"] = per_call_us(raw.get, keys)
    finally:
        raw.close()
    table = dict.fromkeys(ids, 1)
    out["dict_get_us"] = per_call_us(table.get, ids)
    payload = encode(WATERLOG, [(1_719_763_200, {"water_depth": 0.42, "battery_v": 3.6})])
    out["decode_us"] = per_call_us(lambda p: list(WATERLOG.decode_binary(p)), [payload] * n)
    for k in ("miss", "hit", "unknown"):
        out[f"{k}_per_s"] = 1e6 / out[f"{k}_us"]
    return out

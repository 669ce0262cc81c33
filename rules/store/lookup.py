"""``DeviceRegistry``: the store as an ``engine.contracts.devices.DeviceLookup``.

Contract:

- ``lookup(identity)`` is O(1): a bounded LRU cache in front of a RocksDB point read
  (a Bloom filter answers most unknown identities without reading a block). It does no
  I/O but reading the store, never blocks on a writer, and is meant for the event loop;
  unknown identities are cached too, so a device that is not registered and keeps
  sending costs a dictionary lookup.
- Memory is bounded by ``cache_size`` entries (about 0.5 KiB each, measured in
  tests/unit/test_registry_store.py) plus the store's reader memory (``rules.store.db``),
  whatever the number of distinct devices looked up.
- Updates made by another process (``vigil registry import`` while the gateway runs)
  become visible at the next ``refresh()``: it catches the secondary instance up with
  the writer and empties the cache when anything was written. ``follow()`` does that
  every ``interval_s`` seconds on a running event loop (and at once when its ``wake``
  event is set), the reading in a worker thread. ``close()`` waits for a catch-up in
  progress, so a follow task cancelled just before it never reads a closed store.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from types import MappingProxyType

import msgpack

from engine.contracts.devices import Device
from rules.store.db import DEVICE, open_reader, read_meta

__all__ = ["DeviceRegistry", "decode_device", "read_device"]

_NO_METRICS: MappingProxyType[str, str] = MappingProxyType({})


def decode_device(identity: str, raw: bytes) -> Device:
    """A stored device record (``rules.store.db``) as the contract's Device."""
    station, product, key, metrics, _import, _line = msgpack.unpackb(raw)
    # Interned: ten thousand cached devices of one station share its strings.
    return Device(identity, sys.intern(station), sys.intern(product), key, metrics or _NO_METRICS)


def read_device(path: Path, identity: str) -> tuple[Device, int, int] | None:
    """One device with the import number and CSV line that wrote it, read once."""
    db = open_reader(path)
    try:
        raw = db.get(DEVICE + identity.encode())
    finally:
        db.close()
    if raw is None:
        return None
    *_, number, line = msgpack.unpackb(raw)
    return decode_device(identity, raw), int(number), int(line)


class DeviceRegistry:
    """Devices by identity, from the store at ``path``, followed while others write it."""

    def __init__(self, path: Path, cache_size: int = 100_000) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.path = Path(path)
        self.cache_size = cache_size
        self._secondary = Path(tempfile.mkdtemp(prefix="vigil-registry-"))
        try:
            self._db = open_reader(self.path, self._secondary)
        except BaseException:
            shutil.rmtree(self._secondary, ignore_errors=True)
            raise
        self._seq = self._db.latest_sequence_number()
        self._cache: OrderedDict[str, Device | None] = OrderedDict()
        self._io = threading.Lock()  # a catch-up in a thread, and close
        self._closed = False

    def lookup(self, identity: str) -> Device | None:
        """The device with this identity, or None when it is not registered."""
        cache = self._cache
        if identity in cache:
            cache.move_to_end(identity)
            return cache[identity]
        raw = self._db.get(DEVICE + identity.encode())
        device = None if raw is None else decode_device(identity, raw)
        cache[identity] = device
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return device

    def catch_up(self) -> bool:
        """Read what writers added since the last call; True when anything changed.
        Safe to run in a thread while ``lookup`` runs on the loop; False once closed."""
        with self._io:
            if self._closed:
                return False
            self._db.try_catch_up_with_primary()
            seq = self._db.latest_sequence_number()
        changed, self._seq = seq != self._seq, seq
        return changed

    def refresh(self) -> bool:
        """``catch_up`` and forget cached devices when anything changed."""
        changed = self.catch_up()
        if changed:
            self._cache = OrderedDict()  # a lookup on the old one is never handed out again
        return changed

    async def follow(self, interval_s: float = 1.0, wake: asyncio.Event | None = None) -> None:
        """Refresh every ``interval_s`` seconds, and whenever ``wake`` is set, until
        cancelled (the catch-up reads files, so it runs in a thread; the cache is
        swapped on the loop)."""
        wake = wake or asyncio.Event()
        while True:
            try:
                async with asyncio.timeout(interval_s):
                    await wake.wait()
            except TimeoutError:
                pass
            wake.clear()
            if await asyncio.to_thread(self.catch_up):
                self._cache = OrderedDict()

    def __len__(self) -> int:
        """Devices registered, as of the last refresh."""
        return int(read_meta(self._db, "devices", 0))

    @property
    def cached(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        with self._io:
            if self._closed:
                return
            self._closed = True
            self._db.close()
        shutil.rmtree(self._secondary, ignore_errors=True)

    def __enter__(self) -> DeviceRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

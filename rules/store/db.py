"""The registry store on disk: one RocksDB (rocksdict, raw bytes) per data directory.

Key layout, one key space with a one-byte prefix per kind:

- ``d`` + identity (UTF-8) -> a device record, msgpack
  ``[station, product, key or nil, {product field: station metric}, import, line]``:
  ``import`` is the number of the import that wrote it and ``line`` its CSV line, so
  ``vigil registry show`` can say where a device came from and an import can tell a
  duplicate row in its own file from an update of an earlier import (bounded memory:
  it asks the store, it does not remember ten million identities).
- ``x`` + identity -> ``[import, line]``: a removal made by the import running now;
  dropped when that import ends.
- ``s`` + station id -> the station as JSON (``rules.station.Station.document()``).
- ``m`` + name -> meta, msgpack: ``devices`` (how many), ``imports`` (the last import's
  number), ``last_import`` (what it did).

Why RocksDB rather than SQLite (measured on 1 M devices, bench/RESULTS.md): a third of
the disk (30 B a device with LZ4 against 63 B), 3x the write rate, a point lookup 1.6x
faster; and its secondary instances let a running gateway follow an import made by
another process. One process writes at a time (RocksDB's lock); readers never block it.

Memory of a reader: a 32 MiB block cache plus the index and Bloom filter blocks, about
1.4 B a device (10 bits a key), outside the cache so that a lookup never waits on them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgpack
from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteOptions,
)

__all__ = [
    "DEVICE",
    "META",
    "REMOVAL",
    "STATION",
    "StoreBusy",
    "StoreMissing",
    "device_record",
    "disk_bytes",
    "open_reader",
    "open_writer",
    "read_meta",
    "remove_keys",
    "store_stats",
]

DEVICE, REMOVAL, STATION, META = b"d", b"x", b"s", b"m"

#: The block cache of each process that opens the store (bytes).
BLOCK_CACHE_BYTES = 32 << 20


class StoreMissing(FileNotFoundError):
    """No registry store at the path given."""


class StoreBusy(RuntimeError):
    """Another process is writing the registry store (one writer at a time)."""


def _options(create: bool) -> Options:
    opt = Options(raw_mode=True)
    opt.create_if_missing(create)
    # LZ4 at every level: a third of the uncompressed size, and a block decompresses
    # in well under a microsecond (zstd saves 10 % more disk, costs a lookup more).
    opt.set_compression_type(DBCompressionType.lz4())
    opt.set_bottommost_compression_type(DBCompressionType.lz4())
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)  # a lookup of an unknown identity reads no block
    table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
    opt.set_block_based_table_factory(table)
    opt.set_max_open_files(-1)  # required by secondary instances; harmless for the writer
    opt.set_keep_log_file_num(2)
    return opt


def open_writer(path: Path) -> Rdict:
    """The store at ``path`` for writing, created if missing; StoreBusy when locked."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        return Rdict(str(path), _options(create=True))
    except Exception as exc:  # rocksdict raises plain Exception with RocksDB's text
        if "lock" in str(exc).lower():
            raise StoreBusy(f"another process is writing the registry at {path}") from exc
        raise


def open_reader(path: Path, secondary: Path | None = None) -> Rdict:
    """The store at ``path`` for reading while others may write it.

    With ``secondary`` (an empty folder of the reader's own), a RocksDB secondary
    instance that ``try_catch_up_with_primary()`` brings up to date; without it, a
    read-only snapshot of the store as it is now.
    """
    if not (path / "CURRENT").exists():
        raise StoreMissing(f"no registry store at {path} (vigil registry import creates it)")
    access = (
        AccessType.secondary(str(secondary)) if secondary is not None else AccessType.read_only()
    )
    return Rdict(str(path), _options(create=False), access_type=access)


def device_record(
    station: str, product: str, key: bytes | None, metrics: dict[str, str], imp: int, line: int
) -> bytes:
    return msgpack.packb([station, product, key, metrics, imp, line], use_bin_type=True)


def read_meta(db: Rdict, name: str, default: Any = None) -> Any:
    raw = db.get(META + name.encode())
    return default if raw is None else msgpack.unpackb(raw)


def write_meta(batch: WriteBatch, name: str, value: Any) -> None:
    batch.put(META + name.encode(), msgpack.packb(value, use_bin_type=True))


def remove_keys(
    path: Path, prefix: bytes, counter: str, names: Iterable[str]
) -> tuple[int, list[str]]:
    """Delete the keys ``prefix`` + name (each name once) from the store at ``path``,
    and lower the meta count ``counter`` by those that were there; returns how many
    were removed and the names not found."""
    names = list(dict.fromkeys(names))
    db = open_writer(path)
    try:
        keys = [prefix + name.encode() for name in names]
        batch = WriteBatch(raw_mode=True)
        missing = []
        for name, key, old in zip(names, keys, db.get(keys), strict=True):
            if old is None:
                missing.append(name)
            else:
                batch.delete(key)
        removed = len(names) - len(missing)
        write_meta(batch, counter, int(read_meta(db, counter, 0)) - removed)
        db.write(batch)
        db.flush()
        return removed, missing
    finally:
        db.close()


def fast_writes() -> WriteOptions:
    """Writes without the write-ahead log: an import flushes before it reports success,
    and one cut short is run again (every row is an upsert)."""
    opts = WriteOptions()
    opts.disable_wal = True
    return opts


def disk_bytes(path: Path) -> int:
    """Bytes the store's files take (SST tables, logs, manifest)."""
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def store_stats(path: Path) -> dict[str, Any]:
    """Devices, stations, the last import and the disk the store takes."""
    db = open_reader(path)
    try:
        devices = int(read_meta(db, "devices", 0))
        disk = disk_bytes(path)
        return {
            "devices": devices,
            "stations": int(read_meta(db, "stations", 0)),
            "imports": int(read_meta(db, "imports", 0)),
            "last_import": read_meta(db, "last_import"),
            "disk_bytes": disk,
            "bytes_per_device": disk / devices if devices else None,
        }
    finally:
        db.close()

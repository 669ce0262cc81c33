"""A durable, partitioned, append-only log on local disk (RocksDB through rocksdict).

This is the storage under the embedded ``local://`` Faust transport: Kafka's data model
(topics, partitions, offsets, committed offsets per consumer group) in one process, with
no broker to install. Every write is a synchronous RocksDB write batch (``sync=True``:
the WAL is fsynced before the call returns), so a record whose offset was returned to a
producer survives ``kill -9`` and power loss, and a commit is atomic with the checkpoint
blobs written in the same batch.

The keys and their encoding are in ``engine.runtime.transport.log_layout``.

One process owns a log directory at a time (RocksDB's LOCK file enforces it); inside
the process, ``DurableLog.shared`` hands every user of a path the same instance.

Damage is never read as an end of data: the log opens with RocksDB's paranoid checks
and ``AbsoluteConsistency`` WAL recovery (a cut or corrupt write-ahead log refuses to
open instead of silently recovering a prefix, RocksDB's default), and every read checks
the iterator's status (a block whose checksum fails raises, where the iterator alone
would just stop). Both raise ``LogDamaged``; ``engine.runtime.transport.integrity``
checks a whole log and repairs one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import msgpack
from rocksdict import Rdict, RdictIter, WriteBatch, WriteOptions

from engine.runtime.transport.log_layout import (
    I64,
    U32,
    U64,
    commit_key,
    floor_key,
    is_damage,
    log_options,
    pack_record,
    records_prefix,
    unpack_record,
)

__all__ = ["DurableLog", "LogDamaged", "LogNoSpace", "LogRecord", "TopicExists", "UnknownTopic"]


class UnknownTopic(KeyError):
    """A topic that was never created in this log."""


class TopicExists(ValueError):
    """Re-creating a topic with a different partition count."""


class LogDamaged(RuntimeError):
    """The log's files are corrupt or cut: what it holds cannot be trusted to be whole.

    ``path`` is the data directory, ``detail`` what is wrong (RocksDB's own words)."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: the log is damaged: {detail}")


class LogNoSpace(OSError):
    """The log cannot open: its filesystem is full (RocksDB writes a few files at every
    open). ``path`` is the data directory, ``detail`` RocksDB's words."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: no space left for the log: {detail}")


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One stored record, shaped like a Kafka consumer record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # ms since epoch
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Append:
    """A record to append; ``timestamp`` in ms since epoch."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: tuple[tuple[str, bytes], ...] = ()


class DurableLog:
    """Topics and partitions of records, with committed offsets, on one RocksDB."""

    _shared: ClassVar[dict[Path, DurableLog]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._db = Rdict(str(self.path / "log"), log_options())
        except Exception as exc:
            if is_damage(exc):
                raise LogDamaged(self.path, str(exc)) from None
            if "No space left on device" in str(exc):
                raise LogNoSpace(self.path, str(exc)) from None
            raise
        self._sync = WriteOptions()
        self._sync.sync = True
        self._topics: dict[str, dict[str, Any]] = {}
        self._highwater: dict[tuple[str, int], int] = {}
        self._load_topics()
        self._refs = 0

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    def shared(cls, path: str | Path) -> DurableLog:
        """The process-wide instance for ``path``; pair every call with ``release``."""
        key = Path(path).resolve()
        with cls._shared_lock:
            log = cls._shared.get(key)
            if log is None:
                log = cls._shared[key] = cls(key)
            log._refs += 1
            return log

    def release(self) -> None:
        """Drop one ``shared`` reference; the last one closes the database."""
        with self._shared_lock:
            self._refs -= 1
            if self._refs <= 0:
                self._shared.pop(self.path.resolve(), None)
                self.close()

    def close(self) -> None:
        self._db.close()

    def _iter(self) -> RdictIter:
        return self._db.iter()

    def _ended(self, it: RdictIter) -> None:
        """Call after a scan with ``it``: raises ``LogDamaged`` if it stopped on damage
        rather than at the end of the data (or of what the scan wanted)."""
        try:
            it.status()
        except Exception as exc:
            raise LogDamaged(self.path, str(exc)) from None

    # ---- topics ----------------------------------------------------------------------

    def _load_topics(self) -> None:
        it = self._iter()
        it.seek(b"T")
        while it.valid():
            key = it.key()
            if not key.startswith(b"T"):
                break
            topic = key[1:].decode()
            self._topics[topic] = msgpack.unpackb(it.value())
            it.next()
        self._ended(it)
        for topic, meta in self._topics.items():
            for partition in range(meta["partitions"]):
                self._highwater[(topic, partition)] = self._scan_highwater(topic, partition)

    def _scan_highwater(self, topic: str, partition: int) -> int:
        prefix = records_prefix(topic, partition)
        it = self._iter()
        it.seek_for_prev(prefix + b"\xff" * 8)
        scanned = 0
        if it.valid() and it.key().startswith(prefix):
            scanned = int(U64.unpack(it.key()[len(prefix) :])[0]) + 1
        self._ended(it)
        floor = self._db.get(floor_key(topic, partition))
        return max(scanned, 0 if floor is None else int(U64.unpack(floor)[0]))

    def create_topic(self, topic: str, partitions: int, **config: Any) -> bool:
        """Create ``topic``; returns False if it already exists with that partition count."""
        if partitions < 1:
            raise ValueError(f"topic {topic!r}: partitions must be >= 1, got {partitions}")
        existing = self._topics.get(topic)
        if existing is not None:
            if existing["partitions"] != partitions:
                raise TopicExists(
                    f"topic {topic!r} exists with {existing['partitions']} partitions, "
                    f"not {partitions}"
                )
            return False
        meta = {"partitions": partitions, **config}
        self._db.put(b"T" + topic.encode(), msgpack.packb(meta), self._sync)
        self._topics[topic] = meta
        for partition in range(partitions):
            self._highwater[(topic, partition)] = 0
        return True

    def topics(self) -> Mapping[str, int]:
        """Topic name -> partition count."""
        return {t: m["partitions"] for t, m in self._topics.items()}

    def partitions(self, topic: str) -> int | None:
        meta = self._topics.get(topic)
        return None if meta is None else int(meta["partitions"])

    def _check_tp(self, topic: str, partition: int) -> None:
        n = self.partitions(topic)
        if n is None:
            raise UnknownTopic(topic)
        if not 0 <= partition < n:
            raise ValueError(f"topic {topic!r} has {n} partitions, no partition {partition}")

    # ---- records ---------------------------------------------------------------------

    def append(self, records: Sequence[Append]) -> list[int]:
        """Durably append ``records`` in one atomic write; returns their offsets."""
        batch = WriteBatch(raw_mode=True)
        offsets: list[int] = []
        next_offsets: dict[tuple[str, int], int] = {}
        for rec in records:
            self._check_tp(rec.topic, rec.partition)
            tp = (rec.topic, rec.partition)
            offset = next_offsets.get(tp, self._highwater[tp])
            next_offsets[tp] = offset + 1
            batch.put(
                records_prefix(rec.topic, rec.partition) + U64.pack(offset),
                pack_record(rec.key, rec.value, rec.timestamp, rec.headers),
            )
            offsets.append(offset)
        self._db.write(batch, self._sync)
        self._highwater.update(next_offsets)
        return offsets

    def read(self, topic: str, partition: int, offset: int, max_records: int) -> list[LogRecord]:
        """Up to ``max_records`` records of one partition from ``offset`` on."""
        self._check_tp(topic, partition)
        prefix = records_prefix(topic, partition)
        it = self._iter()
        it.seek(prefix + U64.pack(max(offset, 0)))
        out: list[LogRecord] = []
        n_prefix = len(prefix)
        while it.valid() and len(out) < max_records:
            key = it.key()
            if not key.startswith(prefix):
                break
            k, v, ts, headers = unpack_record(it.value())
            out.append(
                LogRecord(
                    topic=topic,
                    partition=partition,
                    offset=int(U64.unpack(key[n_prefix:])[0]),
                    key=k,
                    value=v,
                    timestamp=ts,
                    headers=headers,
                )
            )
            it.next()
        self._ended(it)
        return out

    def highwater(self, topic: str, partition: int) -> int:
        """The offset the next appended record will get (Kafka's log-end offset)."""
        self._check_tp(topic, partition)
        return self._highwater[(topic, partition)]

    def earliest(self, topic: str, partition: int) -> int:
        """The lowest offset still stored (the highwater when the partition is empty)."""
        self._check_tp(topic, partition)
        prefix = records_prefix(topic, partition)
        it = self._iter()
        it.seek(prefix)
        if it.valid() and it.key().startswith(prefix):
            return int(U64.unpack(it.key()[len(prefix) :])[0])
        self._ended(it)
        return self._highwater[(topic, partition)]

    def trim(self, topic: str, partition: int, before: int) -> None:
        """Delete the records of one partition below offset ``before`` (retention)."""
        self._check_tp(topic, partition)
        prefix = records_prefix(topic, partition)
        start, end = prefix + U64.pack(0), prefix + U64.pack(max(before, 0))
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(start, end)
        self._db.write(batch, self._sync)
        # A deletion frees no disk until compaction drops the records; the storage bounds
        # (engine.runtime.storage) count on trimming to give the space back now.
        self._db.compact_range(start, end)

    def first_offset_keeping(self, topic: str, partition: int, max_bytes: int) -> int:
        """The lowest offset from which the partition's newest records take at most
        ``max_bytes`` as stored (reads newest first, at most ``max_bytes`` of them)."""
        self._check_tp(topic, partition)
        prefix = records_prefix(topic, partition)
        it = self._iter()
        it.seek_for_prev(prefix + b"\xff" * 8)
        first, total = self._highwater[(topic, partition)], 0
        while it.valid() and it.key().startswith(prefix):
            total += len(it.key()) + len(it.value())
            if total > max_bytes:
                break
            first = int(U64.unpack(it.key()[len(prefix) :])[0])
            it.prev()
        self._ended(it)
        return first

    def first_offset_since(self, topic: str, partition: int, ts_ms: int) -> int:
        """The first offset whose record's timestamp is ``ts_ms`` or later (the highwater
        if there is none). Timestamps are append times, in order along a partition."""
        lo, hi = self.earliest(topic, partition), self.highwater(topic, partition)
        while lo < hi:  # every record below lo is older than ts_ms; none from hi on is
            mid = (lo + hi) // 2
            records = self.read(topic, partition, mid, 1)
            if records and records[0].timestamp < ts_ms:
                lo = records[0].offset + 1
            else:
                hi = mid
        return lo

    def topic_config(self, topic: str) -> Mapping[str, Any]:
        """What ``create_topic`` was given for ``topic`` besides its partition count."""
        return dict(self._topics[topic])

    # ---- consumer groups and checkpoints ----------------------------------------------

    def committed_floor(self, topic: str, partition: int) -> int | None:
        """The lowest offset that a group reading ``topic`` has committed for this
        partition (0 if one of them has not committed it yet), or None if no group has
        ever committed any partition of the topic: below it, every reader is done."""
        groups: set[bytes] = set()
        mine: dict[bytes, int] = {}
        it = self._iter()
        it.seek(b"C")
        wanted = topic.encode()
        while it.valid():
            key = it.key()
            if not key.startswith(b"C"):
                break
            group, rest = key[1:].split(b"\x00", 1)
            if rest[:-5] == wanted:
                groups.add(group)
                if int(U32.unpack(rest[-4:])[0]) == partition:
                    mine[group] = int(I64.unpack(it.value())[0])
            it.next()
        self._ended(it)
        if not groups:
            return None
        return min(mine.get(g, 0) for g in groups)

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        """The group's committed offset (next offset to read), or None if never committed."""
        raw = self._db.get(commit_key(group, topic, partition))
        return None if raw is None else int(I64.unpack(raw)[0])

    def commit(
        self,
        group: str,
        offsets: Mapping[tuple[str, int], int],
        blobs: Mapping[str, bytes] | None = None,
    ) -> None:
        """Atomically and durably store committed offsets and checkpoint blobs together."""
        batch = WriteBatch(raw_mode=True)
        for (topic, partition), offset in offsets.items():
            batch.put(commit_key(group, topic, partition), I64.pack(offset))
        for name, blob in (blobs or {}).items():
            batch.put(b"S" + name.encode(), blob)
        self._db.write(batch, self._sync)

    def check_writable(self) -> None:
        """Write and fsync a small probe key; raises what a write raises (a full disk,
        RocksDB in its background-error state). The readiness check's proof that the
        log still takes durable writes."""
        self._db.put(b"P", I64.pack(time.time_ns()), self._sync)

    def blob(self, name: str) -> bytes | None:
        """A checkpoint blob stored by ``commit``."""
        raw = self._db.get(b"S" + name.encode())
        return None if raw is None else bytes(raw)

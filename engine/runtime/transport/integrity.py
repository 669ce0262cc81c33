"""The embedded log's integrity: checked at every start, repaired on the operator's word.

``check`` reads the whole log once: every block's checksum (RocksDB verifies each block it
reads), every partition's offsets contiguous from its earliest record to its last, and no
consumer group committed past a partition's end (the committed offsets say how far the
records went; a log that ends before them lost its tail). A log that fails any of this
must not be run on: the engine would evaluate the readings it still has and never say
that others are gone. ``vigil run`` refuses to start and names the recovery command.

``repair`` (``vigil data repair``) keeps what can be read and says what cannot: it opens
the damaged log read-only (a cut write-ahead log recovered up to the cut, RocksDB's
point-in-time recovery), copies every readable record into a new log, stepping over
damaged blocks, records the lost offset ranges in the new log (so that ``check`` passes
and the lost readings stay on record), sets each partition's highwater at or above every
committed offset (new records never reuse an offset a consumer has passed), and moves
the damaged log aside as ``log.damaged-<time>``, untouched. It needs free space for a
second copy of the log. What was lost cannot come back from the gateway: those readings
were acknowledged, so the broker does not have them either.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from rocksdict import AccessType, DBRecoveryMode, Rdict, WriteBatch, WriteOptions

from engine.runtime.transport.log import DurableLog, LogDamaged
from engine.runtime.transport.log_layout import (
    I64,
    META_PREFIXES,
    U32,
    U64,
    floor_key,
    gap_prefix,
    log_options,
    records_prefix,
)

__all__ = ["RepairFailed", "Report", "check", "repair", "verify"]

_END = (1 << 64) - 1


class RepairFailed(RuntimeError):
    """A log that ``repair`` cannot rebuild (its topic list or offsets are unreadable)."""


@dataclass
class Report:
    """What ``check`` or ``repair`` found: ``problems`` (empty: the log is whole) and the
    records per ``topic/partition``."""

    problems: list[str] = field(default_factory=list)
    records: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)  # repair: what could not be kept

    @property
    def ok(self) -> bool:
        return not self.problems


def _known_gaps(db: Rdict, topic: str, partition: int) -> list[tuple[int, int]]:
    """Offset ranges [start, end) that a repair recorded as lost."""
    prefix = gap_prefix(topic, partition)
    it = db.iter()
    it.seek(prefix)
    gaps = []
    while it.valid() and it.key().startswith(prefix):
        start = int(U64.unpack(it.key()[len(prefix) :])[0])
        gaps.append((start, int(U64.unpack(it.value())[0])))
        it.next()
    it.status()
    return gaps


def _committed(db: Rdict, topic: str, partition: int) -> dict[str, int]:
    """Group -> committed offset of ``topic``/``partition``."""
    out: dict[str, int] = {}
    it = db.iter()
    it.seek(b"C")
    while it.valid() and it.key().startswith(b"C"):
        group, rest = it.key()[1:].split(b"\x00", 1)
        if rest[:-5] == topic.encode() and int(U32.unpack(rest[-4:])[0]) == partition:
            out[group.decode()] = int(I64.unpack(it.value())[0])
        it.next()
    it.status()
    return out


def check(path: str | Path) -> Report:
    """Read the log under ``path`` (a data directory) end to end; see the module doc.

    Raises ``LogDamaged`` when the log cannot even be opened (a cut or corrupt
    write-ahead log, a missing table file)."""
    durable = DurableLog.shared(path)
    try:
        return _check(durable)
    finally:
        durable.release()


def verify(path: str | Path) -> Report:
    """``check``, raising ``LogDamaged`` with the problems when there are any: what a
    start does before it runs on the log."""
    report = check(path)
    if not report.ok:
        more = len(report.problems) - 3
        detail = "; ".join(report.problems[:3]) + (f"; and {more} more" if more > 0 else "")
        raise LogDamaged(Path(path), detail)
    return report


def _check(durable: DurableLog) -> Report:
    report = Report()
    db = durable._db
    for topic, partitions in sorted(durable.topics().items()):
        for partition in range(partitions):
            name = f"{topic}/{partition}"
            prefix = records_prefix(topic, partition)
            gaps = _known_gaps(db, topic, partition)
            it = db.iter()
            it.seek(prefix)
            count, expected, last = 0, None, -1
            try:
                while it.valid() and it.key().startswith(prefix):
                    offset = int(U64.unpack(it.key()[len(prefix) :])[0])
                    known = any(s <= (expected or 0) and offset <= e for s, e in gaps)
                    if expected is not None and offset != expected and not known:
                        report.problems.append(
                            f"{name}: records {expected}..{offset - 1} are missing"
                        )
                    count, expected, last = count + 1, offset + 1, offset
                    it.next()
                it.status()
            except Exception as exc:
                report.problems.append(f"{name}: unreadable after offset {last}: {exc}")
                continue
            report.records[name] = count
            end = durable.highwater(topic, partition)
            for group, offset in sorted(_committed(db, topic, partition).items()):
                if offset > end:
                    report.problems.append(
                        f"{name}: group {group} committed offset {offset}, but the log ends "
                        f"at {end}: records {end}..{offset - 1} are missing"
                    )
    return report


# ---- repair ---------------------------------------------------------------------------


def repair(path: str | Path, clock: float | None = None) -> Report:
    """Rebuild the log under data directory ``path`` from what is readable; see the
    module doc. Returns the report of the rebuilt log, with ``lost`` saying what could
    not be kept. Raises ``RepairFailed`` when the log's metadata itself is unreadable."""
    data_dir = Path(path)
    log_dir = data_dir / "log"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock))
    new_dir = data_dir / "log.repairing"
    shutil.rmtree(new_dir, ignore_errors=True)
    lost: list[str] = []
    scratch = data_dir / "log.repair-source"
    source, how = _open_damaged(log_dir, scratch)
    if how:
        lost.append(how)
    try:
        target = Rdict(str(new_dir), log_options())
        try:
            lost += _copy(source, target)
            target.flush()
        finally:
            target.close()
    finally:
        source.close()
    shutil.rmtree(scratch, ignore_errors=True)
    log_dir.rename(data_dir / f"log.damaged-{stamp}")
    new_dir.rename(log_dir)
    report = check(data_dir)
    report.lost = lost
    return report


def _open_damaged(log_dir: Path, scratch: Path) -> tuple[Rdict, str]:
    """The damaged log, read-only; with the note of what opening it cost ('' if none).

    A cut write-ahead log opens up to the cut (point-in-time recovery). A table file
    that cannot be opened at all (cut short: no footer, no index) leaves RocksDB's own
    repair, on a copy in ``scratch``: it sets aside the tables it cannot read, and the
    copy reports their records as missing offsets."""
    try:
        return Rdict(str(log_dir), log_options(), access_type=AccessType.read_only()), ""
    except Exception as exc:
        strict_error = str(exc)
    options = log_options()
    options.set_wal_recovery_mode(DBRecoveryMode.point_in_time())
    try:
        db = Rdict(str(log_dir), options, access_type=AccessType.read_only())
        return db, (
            f"the write-ahead log was damaged ({strict_error}): what was written after the "
            "damage is lost; the records before it are kept"
        )
    except Exception:
        pass
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(log_dir, scratch)
    try:
        Rdict.repair(str(scratch), options)
        db = Rdict(str(scratch), options, access_type=AccessType.read_only())
    except Exception as exc:
        raise RepairFailed(
            f"{log_dir}: cannot be opened even up to its damage ({exc}); restore it from a "
            "backup, or move it away and start empty"
        ) from None
    return db, f"a table file was unreadable ({strict_error}): its records are lost"


def _copy(source: Rdict, target: Rdict) -> list[str]:
    """Copy every readable key; returns the lost ranges, one line each."""
    lost: list[str] = []
    writes = WriteOptions()  # one flush at the end makes the copy durable
    topics: dict[str, int] = {}
    for prefix in META_PREFIXES:
        try:
            for key, value in _range(source, prefix):
                target.put(key, value, writes)
                if prefix == b"T":
                    topics[key[1:].decode()] = int(msgpack.unpackb(value)["partitions"])
        except Exception as exc:
            raise RepairFailed(
                f"the log's metadata ({prefix.decode()} keys) is unreadable ({exc}); restore "
                "it from a backup, or move it away and start empty"
            ) from None
    for topic, partitions in sorted(topics.items()):
        for partition in range(partitions):
            lost += _copy_partition(source, target, topic, partition, writes)
    return lost


def _range(db: Rdict, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    it = db.iter()
    it.seek(prefix)
    while it.valid() and it.key().startswith(prefix):
        yield it.key(), it.value()
        it.next()
    it.status()


def _readable_from(db: Rdict, prefix: bytes, offset: int) -> bool:
    """Whether a seek to ``offset`` of the partition reads without damage."""
    it = db.iter()
    it.seek(prefix + U64.pack(offset))
    try:
        it.status()
    except Exception:
        return False
    return True


def _copy_partition(
    source: Rdict, target: Rdict, topic: str, partition: int, writes: WriteOptions
) -> list[str]:
    prefix = records_prefix(topic, partition)
    name = f"{topic}/{partition}"
    lost: list[str] = []
    last = -1
    position = 0
    while True:
        if not _readable_from(source, prefix, position):
            # A damaged block: seeks into it fail, seeks past it succeed. Gallop to a
            # readable offset, then bisect back to the block's end (gallop, not a bisection
            # of the whole range: a second damaged block further on would mislead it).
            if not _readable_from(source, prefix, _END):
                lost.append(f"{name}: records from offset {position} on are unreadable")
                break
            step = 1
            while not _readable_from(source, prefix, min(position + step, _END)):
                step *= 2
            lo, hi = position + step // 2, min(position + step, _END)
            while lo < hi:
                mid = (lo + hi) // 2
                if _readable_from(source, prefix, mid):
                    hi = mid
                else:
                    lo = mid + 1
            lost.append(f"{name}: records {position}..{lo - 1} are unreadable")
            target.put(gap_prefix(topic, partition) + U64.pack(position), U64.pack(lo), writes)
            position, last = lo, lo - 1
        it = source.iter()
        it.seek(prefix + U64.pack(position))
        batch = WriteBatch(raw_mode=True)
        while it.valid() and it.key().startswith(prefix):
            offset = int(U64.unpack(it.key()[len(prefix) :])[0])
            if last >= 0 and offset != last + 1:  # a table RocksDB's repair set aside
                lost.append(f"{name}: records {last + 1}..{offset - 1} are missing")
                batch.put(gap_prefix(topic, partition) + U64.pack(last + 1), U64.pack(offset))
            batch.put(it.key(), it.value())
            last = offset
            it.next()
        target.write(batch, writes)
        try:
            it.status()
            break  # the partition's end
        except Exception:
            position = last + 1
    committed = _committed(source, topic, partition)
    floor = max([last + 1, *committed.values()])
    if floor > last + 1:
        lost.append(
            f"{name}: records {last + 1}..{floor - 1} are gone (committed by "
            f"{', '.join(sorted(committed))}, no longer in the log)"
        )
        target.put(floor_key(topic, partition), U64.pack(floor), writes)
    return lost

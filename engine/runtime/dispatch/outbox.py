"""The dispatcher's durable store: its state and the outbox, in one RocksDB.

Why RocksDB (through rocksdict, as the embedded log): one ``WriteBatch`` with a synced
WAL writes the dispatcher's snapshot *and* the notifications a tick produced in one
atomic step, and marking an entry done is a keyed delete-and-put, not a rewrite of an
append-only file. It is its own database (``<data_dir>/dispatch``), not a topic of the
transport's log, so that the log's format and lock stay the transport's alone.

Contract:

- ``persist(snapshot, notifications, history)`` stores them atomically and durably
  (synced WAL) and returns the new outbox entries; nothing is attempted before this
  returns. It is ``prepare`` (on the caller's thread: numbering, encoding, so the
  snapshot is the state of that moment) then ``write`` (the synced write, which the
  gateway runs on its one writer thread, off the event loop; writes happen in the order
  they were prepared).
- Entries are numbered by one counter (``seq``); per receiver they are delivered in
  ``seq`` order (``pending(receiver)``), and an entry stays pending until ``done`` or
  ``park`` moves it. A restart finds every pending entry again, with the same
  ``Notification.key``: the receiving side drops a key it has seen. ``done`` and
  ``park`` are not synced (a process crash keeps them: the WAL is in the OS; a power
  cut may lose the last few, and those entries are then sent again with their key --
  at least once, as a crash mid-send already is): a sync per delivery would cost a
  disk flush per message on the event loop.
- ``park`` keeps a permanently refused entry with the reason, for people to see
  (``parked()``); ``done`` keeps the last ``DONE_KEPT`` delivered entries, and the
  alerts history the last ``HISTORY_KEPT`` forgotten alerts (oldest dropped first).

Key layout (``seq`` big-endian u64, so byte order is delivery order)::

    b"state"        -> the Dispatcher snapshot (JSON)
    b"seq"          -> next seq (u64)
    b"P" seq        -> pending entry (JSON)
    b"D" seq        -> delivered entry, with ``delivered_at``
    b"X" seq        -> parked entry, with ``error`` and ``parked_at``
    b"H" seq        -> a forgotten alert's last state (``AlertState.to_dict``)
    b"A" fingerprint -> one alert of the snapshot, when it was stored with ``alerts``:
                       a tick writes the alerts it changed, not every alert
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from engine.contracts.alerts import AlertEvent
from engine.contracts.notification import Notification

__all__ = [
    "DONE_KEPT",
    "HISTORY_KEPT",
    "Changes",
    "Entry",
    "Op",
    "Outbox",
    "Prepared",
    "Store",
    "decode_notification",
    "decode_snapshot",
    "encode_changes",
    "encode_notification",
]

_U64 = struct.Struct(">Q")
#: Delivered entries kept as history (the oldest are dropped beyond this).
DONE_KEPT = 10_000
#: Forgotten alerts kept as history (the oldest are dropped beyond this).
HISTORY_KEPT = 10_000
#: ``alerts`` of a stored snapshot whose alerts are kept one key each.
_PER_KEY = "stored per key"

#: (key, value) to store; value None removes the key.
Op = tuple[bytes, bytes | None]


def encode_notification(n: Notification) -> dict[str, Any]:
    """``n`` as JSON types; ``decode_notification`` gives it back equal."""
    return {
        "key": n.key,
        "receiver": n.receiver,
        "status": n.status,
        "level": n.level,
        "group_labels": dict(n.group_labels),
        "alerts": [a.to_dict() for a in n.alerts],
        "links": dict(n.links),
        "created_at": n.created_at,
        "note": n.note,
        "latched": dict(n.latched),
    }


def decode_notification(data: Mapping[str, Any]) -> Notification:
    return Notification(
        key=data["key"],
        receiver=data["receiver"],
        status=data["status"],
        level=data["level"],
        group_labels=dict(data["group_labels"]),
        alerts=tuple(AlertEvent.from_dict(dict(a)) for a in data["alerts"]),
        links=dict(data["links"]),
        created_at=data["created_at"],
        note=data["note"],
        latched=dict(data.get("latched", {})),  # none in entries stored before latches were told
    )


@dataclass(frozen=True)
class Entry:
    """One notification in the outbox; ``seq`` is its place in delivery order."""

    seq: int
    notification: Notification

    def to_dict(self, **extra: Any) -> dict[str, Any]:
        return {"seq": self.seq, "notification": encode_notification(self.notification), **extra}

    def encode(self, **extra: Any) -> bytes:
        """``to_dict(**extra)`` as stored; ``decode`` gives the entry back."""
        return _dump(self.to_dict(**extra))

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        data = json.loads(raw)
        return cls(data["seq"], decode_notification(data["notification"]))


@dataclass(frozen=True)
class Changes:
    """What one ``prepare`` stores, encoded by ``encode_changes``; the history beyond
    ``HISTORY_KEPT`` and the next ``seq`` are the store's to add."""

    #: The snapshot, its alerts, the new pending entries and history, in that order.
    ops: list[Op]
    entries: list[Entry]
    #: The keys of the history added, oldest first.
    history: list[bytes]
    #: The ``seq`` after the last one these took.
    next_seq: int


def encode_changes(
    next_seq: int,
    snapshot: Mapping[str, Any] | None,
    notifications: Sequence[Notification] = (),
    history: Sequence[Mapping[str, Any]] = (),
    *,
    alerts: Mapping[str, Mapping[str, Any]] | None = None,
    removed: Sequence[str] = (),
) -> Changes:
    """``Store.prepare``'s arguments in the key layout above, the notifications and
    the history numbered from ``next_seq``: one encoding for every store."""
    ops: list[Op] = []
    if snapshot is not None:
        state = {**snapshot, "alerts": _PER_KEY} if alerts is not None else snapshot
        ops.append((b"state", json.dumps(state, separators=(",", ":")).encode()))
    for fingerprint, alert in (alerts or {}).items():
        ops.append((b"A" + fingerprint.encode(), _dump(alert)))
    for fingerprint in removed:
        ops.append((b"A" + fingerprint.encode(), None))
    entries = []
    for n in notifications:
        entry = Entry(next_seq, n)
        next_seq += 1
        ops.append((b"P" + _U64.pack(entry.seq), entry.encode()))
        entries.append(entry)
    kept = []
    for alert in history:
        key = b"H" + _U64.pack(next_seq)
        next_seq += 1
        ops.append((key, _dump(alert)))
        kept.append(key)
    return Changes(ops, entries, kept, next_seq)


def decode_snapshot(
    raw: bytes, alerts: Callable[[], Iterable[tuple[bytes, bytes]]]
) -> dict[str, Any]:
    """The snapshot stored as ``raw``; ``alerts()`` gives the stored ``A`` keys and
    values, read only when the snapshot's alerts were stored one key each."""
    state = dict(json.loads(raw))
    if state.get("alerts") == _PER_KEY:
        state["alerts"] = {k[1:].decode(): json.loads(v) for k, v in alerts()}
    return state


@dataclass(frozen=True)
class Prepared:
    """A write made ready by ``Outbox.prepare``: give it to ``Outbox.write``."""

    batch: WriteBatch
    entries: list[Entry]


class Store(Protocol):
    """What ``DispatchService`` and the API need of a store: ``Outbox`` here, the
    Kafka runtime's ``KafkaOutbox`` (``engine.runtime.dispatch.kafka_store``)."""

    def prepare(
        self,
        snapshot: Mapping[str, Any] | None,
        notifications: Sequence[Notification] = (),
        history: Sequence[Mapping[str, Any]] = (),
        *,
        alerts: Mapping[str, Mapping[str, Any]] | None = None,
        removed: Sequence[str] = (),
    ) -> Any: ...

    def write(self, prepared: Any) -> None: ...

    def done(self, entry: Entry, at_ms: int) -> None: ...

    def park(self, entry: Entry, error: str, at_ms: int) -> None: ...

    def snapshot(self) -> dict[str, Any] | None: ...

    def pending(self) -> list[Entry]: ...

    def parked(self) -> list[dict[str, Any]]: ...

    def history(self) -> list[dict[str, Any]]: ...

    def unmarked(self) -> int:
        """Delivery marks (``done``/``park``) not stored yet."""
        ...


class Outbox:
    """The store of one gateway's dispatcher (``path``: a folder it owns)."""

    def __init__(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(path), options)
        self._sync = WriteOptions()
        self._sync.sync = True
        self._nosync = WriteOptions()
        raw = self._db.get(b"seq")
        self._next = 0 if raw is None else _U64.unpack(raw)[0]
        self._count = {p: sum(1 for _ in self._keys(p)) for p in (b"D", b"H")}
        #: per trimmed prefix, the key its oldest kept entry is at or after (a batch
        #: prepared before the previous one was written must not delete the same keys)
        self._floor = {p: p for p in (b"D", b"H")}

    def close(self) -> None:
        self._db.close()

    # ---- writing -------------------------------------------------------------------

    def persist(
        self,
        snapshot: Mapping[str, Any] | None,
        notifications: Sequence[Notification] = (),
        history: Sequence[Mapping[str, Any]] = (),
        *,
        alerts: Mapping[str, Mapping[str, Any]] | None = None,
        removed: Sequence[str] = (),
    ) -> list[Entry]:
        """Store the snapshot (if given), the notifications as pending and the
        forgotten alerts as history, atomically and durably; their entries in order.
        With ``alerts`` (fingerprint -> entry; ``removed``: fingerprints to drop) the
        snapshot's alerts are kept one key each and updated by these: ``snapshot()``
        then reads them back into its ``alerts``."""
        prepared = self.prepare(snapshot, notifications, history, alerts=alerts, removed=removed)
        self.write(prepared)
        return prepared.entries

    def prepare(
        self,
        snapshot: Mapping[str, Any] | None,
        notifications: Sequence[Notification] = (),
        history: Sequence[Mapping[str, Any]] = (),
        *,
        alerts: Mapping[str, Mapping[str, Any]] | None = None,
        removed: Sequence[str] = (),
    ) -> Prepared:
        """Number and encode what ``persist`` stores; nothing is written yet."""
        changes = encode_changes(
            self._next, snapshot, notifications, history, alerts=alerts, removed=removed
        )
        self._next = changes.next_seq
        batch = WriteBatch(raw_mode=True)
        for key, value in changes.ops:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._trim(batch, b"H", len(changes.history), HISTORY_KEPT)
        batch.put(b"seq", _U64.pack(self._next))
        return Prepared(batch, changes.entries)

    def write(self, prepared: Prepared) -> None:
        """The synced write of ``prepare``'s batch (safe on another thread)."""
        self._db.write(prepared.batch, self._sync)

    def done(self, entry: Entry, at_ms: int) -> None:
        """The receiver confirmed ``entry``: it leaves the pending entries."""
        batch = self._move(entry, b"D", delivered_at=at_ms)
        self._trim(batch, b"D", 1, DONE_KEPT)
        self._db.write(batch, self._nosync)

    def park(self, entry: Entry, error: str, at_ms: int) -> None:
        """The receiver refused ``entry`` for good: kept aside with the reason."""
        self._db.write(self._move(entry, b"X", error=error, parked_at=at_ms), self._nosync)

    def _move(self, entry: Entry, prefix: bytes, **extra: Any) -> WriteBatch:
        seq = _U64.pack(entry.seq)
        batch = WriteBatch(raw_mode=True)
        batch.delete(b"P" + seq)
        batch.put(prefix + seq, entry.encode(**extra))
        return batch

    def _trim(self, batch: WriteBatch, prefix: bytes, added: int, kept: int) -> None:
        """Delete the oldest of ``prefix`` beyond ``kept`` once ``added`` more are in
        (reads only the keys it deletes)."""
        self._count[prefix] += added
        excess = self._count[prefix] - kept
        if excess > 0:
            key = self._floor[prefix]
            for key in itertools.islice(self._keys(prefix, self._floor[prefix]), excess):
                batch.delete(key)
            self._floor[prefix] = key + b"\x00"  # just after the last deleted
            self._count[prefix] = kept

    # ---- reading -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any] | None:
        raw = self._db.get(b"state")
        if raw is None:
            return None
        return decode_snapshot(bytes(raw), lambda: self._items(b"A"))

    def unmarked(self) -> int:
        """0: ``done`` and ``park`` write at once (unsynced: the WAL is in the OS)."""
        return 0

    def pending(self) -> list[Entry]:
        """Every entry not yet confirmed nor parked, in delivery order."""
        return [Entry.decode(raw) for raw in self._values(b"P")]

    def parked(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self._values(b"X")]

    def history(self) -> list[dict[str, Any]]:
        """The forgotten alerts kept as history, oldest first."""
        return [json.loads(raw) for raw in self._values(b"H")]

    def delivered(self) -> list[dict[str, Any]]:
        """The delivered entries kept as history, oldest first."""
        return [json.loads(raw) for raw in self._values(b"D")]

    def _keys(self, prefix: bytes, start: bytes | None = None) -> Iterator[bytes]:
        for key, _ in self._items(prefix, start):
            yield key

    def _values(self, prefix: bytes) -> Iterator[bytes]:
        for _, value in self._items(prefix):
            yield value

    def _items(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iter()
        it.seek(start or prefix)
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix):
                break
            yield key, bytes(it.value())
            it.next()


def _dump(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()

"""The dispatcher's state and outbox on Kafka: a compacted topic, written in transactions.

On a Kafka worker the dispatcher's store is the one-partition compacted topic
``<app_id>-dispatch-state`` (``KafkaOutbox``), with the key layout of the gateway's
RocksDB store (``engine.runtime.dispatch.outbox``): ``state``, ``seq``, ``A``
fingerprint, ``P``/``D``/``X``/``H`` + seq (u64 big-endian); a removed key is a
tombstone (null value), so compaction keeps exactly the live keys.

Contract:

- ``KafkaOutbox.load`` reads the topic with ``read_committed`` from its beginning up to
  a marker record it has just committed itself, after its transactional producer
  (``transactional_id = <app_id>-dispatcher``) has started: starting it fences the
  previous owner and completes its open transaction (committed or aborted) first, so
  what is read is every write the previous owner committed and nothing it did not.
- ``prepare`` encodes the changes (as ``Outbox.prepare``) plus the delivery marks made
  since the last one, and the dispatch topic's offset up to which the state holds every
  event (``position``); ``commit`` writes them and that offset (to the consumer group
  ``<app_id>-dispatcher``) in **one transaction**. So a notification, the state that made
  it and the input consumed are committed together or not at all: a new owner resumes
  from a consistent point, re-reads only input the state does not hold (the lifecycle
  drops a transition it has), and makes no notification twice. Commits land in the
  order they were prepared.
- ``done``/``park`` (a receiver confirmed or refused an entry) are kept in memory and
  go in the next transaction (``on_mark`` is called so that the service stores soon,
  within a tick); a failover before it sends that entry again, with the same key --
  delivery is at least once, as on the gateway, and the key lets a receiver drop the
  repeat.
- Once a transaction was refused with ``ProducerFenced`` (a newer owner took the
  transactional id), every later ``commit`` raises ``ProducerFenced`` too (``fenced``):
  the producer is then in a fatal state, and a store queued behind the refused one
  must not fail with another error that would read as "the broker is away" and make
  the worker take over again on a stale assignment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import ProducerFenced

from engine.contracts.notification import Notification
from engine.runtime.dispatch.outbox import (
    DONE_KEPT,
    HISTORY_KEPT,
    Entry,
    Op,
    decode_snapshot,
    encode_changes,
)

__all__ = ["KafkaOutbox", "KafkaPrepared"]

log = logging.getLogger("vigil.dispatch")

_U64 = struct.Struct(">Q")
#: Records larger than the broker's default (1 MB) are a storm's state: allow 16 MB.
MAX_RECORD_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class KafkaPrepared:
    """One transaction made ready by ``KafkaOutbox.prepare``."""

    ops: list[Op]
    entries: list[Entry]
    #: Next offset of the dispatch topic's partition that the state holds; None: none read.
    position: int | None
    #: Delivery marks among ``ops``.
    marks: int


class KafkaOutbox:
    """The store of the dispatcher this worker owns now (build it with ``load``)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        state_topic: str,
        input_tp: TopicPartition,
        group_id: str,
        data: dict[bytes, bytes],
    ) -> None:
        self._producer = producer
        self.state_topic = state_topic
        self.input_tp = input_tp
        self.group_id = group_id
        self._data = data
        raw = data.get(b"seq")
        self._next = 0 if raw is None else _U64.unpack(raw)[0]
        self._kept = {p: deque(sorted(k for k in data if k[:1] == p)) for p in (b"D", b"H")}
        self._marks: list[Op] = []
        #: Marks prepared but whose transaction has not committed yet.
        self._marks_in_flight = 0
        self._lock = asyncio.Lock()
        #: True once a transaction was refused as fenced: no later one is tried.
        self.fenced = False
        #: Set by the owner's consumer loop after ``receive`` took a record's events.
        self.position: int | None = None
        #: Called after ``done``/``park``: the marks wait for the next transaction.
        self.on_mark: Callable[[], None] = lambda: None

    @classmethod
    async def load(
        cls,
        bootstrap: str,
        producer: AIOKafkaProducer,
        state_topic: str,
        input_tp: TopicPartition,
        group_id: str,
        owner: str,
    ) -> KafkaOutbox:
        """Everything committed to ``state_topic``; ``producer`` (transactional, started)
        has fenced the previous owner. ``owner`` names this worker in the marker."""
        async with producer.transaction():
            sent = await producer.send(state_topic, key=b"owner", value=owner.encode(), partition=0)
        marker = (await sent).offset
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            max_partition_fetch_bytes=MAX_RECORD_BYTES,
            fetch_max_bytes=4 * MAX_RECORD_BYTES,
        )
        await consumer.start()
        data: dict[bytes, bytes] = {}
        try:
            tp = TopicPartition(state_topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            done = False
            while not done:
                for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                    for r in records:
                        if r.key is None:
                            continue
                        if r.value is None:
                            data.pop(r.key, None)
                        else:
                            data[r.key] = r.value
                        done = done or r.offset >= marker
        finally:
            await consumer.stop()
        data.pop(b"owner", None)
        return cls(producer, state_topic, input_tp, group_id, data)

    # ---- writing -------------------------------------------------------------------

    def prepare(
        self,
        snapshot: Mapping[str, Any] | None,
        notifications: Sequence[Notification] = (),
        history: Sequence[Mapping[str, Any]] = (),
        *,
        alerts: Mapping[str, Mapping[str, Any]] | None = None,
        removed: Sequence[str] = (),
    ) -> KafkaPrepared:
        """As ``Outbox.prepare``, plus the marks since the last and ``position``."""
        ops, self._marks = self._marks, []
        marks = len(ops)
        self._marks_in_flight += marks
        changes = encode_changes(
            self._next, snapshot, notifications, history, alerts=alerts, removed=removed
        )
        self._next = changes.next_seq
        ops += changes.ops  # a removed key is a tombstone (value None)
        self._kept[b"H"].extend(changes.history)
        ops += self._trim(b"H", HISTORY_KEPT)
        ops.append((b"seq", _U64.pack(self._next)))
        self._apply(ops)
        return KafkaPrepared(ops, changes.entries, self.position, marks)

    def write(self, prepared: Any) -> None:
        raise TypeError("KafkaOutbox writes through commit(), on the event loop")

    async def commit(self, prepared: KafkaPrepared) -> None:
        """Write ``prepared`` and its input offset in one transaction (in prepare order).
        Raises ``ProducerFenced`` if this or an earlier transaction was fenced."""
        async with self._lock:
            if self.fenced:
                raise ProducerFenced()
            try:
                async with self._producer.transaction():
                    futures = [
                        await self._producer.send(self.state_topic, key=k, value=v, partition=0)
                        for k, v in prepared.ops
                    ]
                    if prepared.position is not None:
                        await self._producer.send_offsets_to_transaction(
                            {self.input_tp: prepared.position}, self.group_id
                        )
                    for fut in futures:
                        await fut
            except ProducerFenced:
                self.fenced = True
                raise
        self._marks_in_flight -= prepared.marks

    def done(self, entry: Entry, at_ms: int) -> None:
        """The receiver confirmed ``entry`` (stored with the next transaction)."""
        key = b"D" + _U64.pack(entry.seq)
        ops: list[Op] = [(b"P" + key[1:], None), (key, entry.encode(delivered_at=at_ms))]
        self._kept[b"D"].append(key)
        self._mark(ops + self._trim(b"D", DONE_KEPT))

    def park(self, entry: Entry, error: str, at_ms: int) -> None:
        """The receiver refused ``entry`` for good (stored with the next transaction)."""
        seq = _U64.pack(entry.seq)
        data = entry.encode(error=error, parked_at=at_ms)
        self._mark([(b"P" + seq, None), (b"X" + seq, data)])

    def unmarked(self) -> int:
        """Delivery marks not committed yet (0 once every delivery is stored)."""
        return len(self._marks) + self._marks_in_flight

    def _mark(self, ops: list[Op]) -> None:
        self._apply(ops)
        self._marks += ops
        self.on_mark()

    def _trim(self, prefix: bytes, kept: int) -> list[Op]:
        keys = self._kept[prefix]
        return [(keys.popleft(), None) for _ in range(max(0, len(keys) - kept))]

    def _apply(self, ops: list[Op]) -> None:
        for key, value in ops:
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value

    # ---- reading -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any] | None:
        raw = self._data.get(b"state")
        if raw is None:
            return None
        return decode_snapshot(raw, lambda: self._items(b"A"))

    def pending(self) -> list[Entry]:
        return [Entry.decode(raw) for _, raw in self._items(b"P")]

    def parked(self) -> list[dict[str, Any]]:
        return [json.loads(v) for _, v in self._items(b"X")]

    def history(self) -> list[dict[str, Any]]:
        return [json.loads(v) for _, v in self._items(b"H")]

    def delivered(self) -> list[dict[str, Any]]:
        return [json.loads(v) for _, v in self._items(b"D")]

    def _items(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        return sorted((k, v) for k, v in self._data.items() if k[:1] == prefix)

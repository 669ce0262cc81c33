"""The Kafka worker's dispatcher store without a broker: what its transactions hold.

``KafkaOutbox.prepare`` makes the records of one transaction; here a dict plays the
compacted topic (a record sets its key, a tombstone removes it) and only the prepared
writes said committed reach it. A new owner built from that dict must find exactly the
committed state, pending entries and marks (the real transactions are exercised on
Kafka by ``tests/integration/test_dispatch_kafka.py``)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from aiokafka import TopicPartition

from engine.contracts.alerts import AlertEvent
from engine.contracts.notification import Notification
from engine.runtime.dispatch import kafka_store
from engine.runtime.dispatch.kafka_store import KafkaOutbox, KafkaPrepared

EVENT = AlertEvent("fp1", "r", "HZ001", "water_level", "red", "orange", "firing", 1, 2, 6.8,
                   6.52, "HZ001 6.80 m", {"basin": "demo_river"})  # fmt: skip
TP = TopicPartition("app-dispatch", 0)


def _n(key: str, receiver: str = "duty") -> Notification:
    return Notification(key, receiver, "firing", "red", {"basin": "demo_river"}, (EVENT,),
                        {"fp1": "http://x/ack/t"}, 5, "note")  # fmt: skip


def _owner(topic: dict[bytes, bytes]) -> KafkaOutbox:
    return KafkaOutbox(cast(Any, None), "app-dispatch-state", TP, "app-dispatcher", dict(topic))


def _commit(topic: dict[bytes, bytes], prepared: KafkaPrepared) -> None:
    for key, value in prepared.ops:
        if value is None:
            topic.pop(key, None)
        else:
            topic[key] = value


def test_a_new_owner_finds_what_was_committed_and_nothing_else() -> None:
    topic: dict[bytes, bytes] = {}
    box = _owner(topic)
    box.position = 7
    first = box.prepare({"version": 1}, [_n("duty:g:1"), _n("mail:g:1", "mail"), _n("duty:g:2")],
                        alerts={"fp1": {"a": 1}, "fp2": {"a": 2}})  # fmt: skip
    assert first.position == 7 and first.marks == 0
    _commit(topic, first)
    a, b, c = first.entries
    box.done(a, 10)
    box.park(b, "HTTP 400", 11)
    assert box.unmarked() == 4  # two keys each: the pending one goes, the mark comes
    second = box.prepare({"version": 2}, alerts={}, removed=["fp2"])
    assert second.marks == 4 and box.unmarked() == 4  # prepared, not yet committed
    _commit(topic, second)
    # A third write is prepared (a notification and a delivery) but never committed:
    # the owner died before its transaction did.
    box.done(c, 12)
    box.prepare({"version": 3}, [_n("duty:g:3")])

    again = _owner(topic)
    assert again.snapshot() == {"version": 2, "alerts": {"fp1": {"a": 1}}}
    assert [(e.seq, e.notification) for e in again.pending()] == [(c.seq, _n("duty:g:2"))]
    assert [d["notification"]["key"] for d in again.delivered()] == ["duty:g:1"]
    assert [(p["notification"]["key"], p["error"]) for p in again.parked()] == [
        ("mail:g:1", "HTTP 400")
    ]
    [d] = again.prepare(None, [_n("duty:g:3")]).entries
    assert d.seq == 3  # the committed counter (the lost write was never sent: entries go
    # to receivers only once their transaction committed)


def test_delivered_entries_and_history_are_trimmed_with_tombstones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka_store, "DONE_KEPT", 2)
    monkeypatch.setattr(kafka_store, "HISTORY_KEPT", 1)
    topic: dict[bytes, bytes] = {}
    box = _owner(topic)
    prepared = box.prepare({}, [_n(f"duty:g:{i}") for i in range(1, 4)], [{"h": 1}, {"h": 2}])
    _commit(topic, prepared)
    for entry in prepared.entries:
        box.done(entry, 1)
    _commit(topic, box.prepare({}))
    again = _owner(topic)
    assert [d["notification"]["key"] for d in again.delivered()] == ["duty:g:2", "duty:g:3"]
    assert again.history() == [{"h": 2}]
    assert again.pending() == []
    assert len(topic) == 2 + 1 + 2  # state, seq; one history; two delivered

"""The embedded Faust transport: ``local:///path/to/data`` with no broker.

A Faust app whose broker URL is ``local:///var/lib/vigil`` keeps its topics, partitions
and committed offsets in a ``DurableLog`` under that directory. Agents, ``stream.take``,
producers and tables with changelog recovery work as on Kafka, in one process:

* the consumer owns every partition of every subscribed topic (a group of one), and
  tells Faust so through the usual rebalance callbacks;
* ``send`` returns a future that resolves only after the record is fsynced (group
  commit: sends made in the same event-loop turn, or while the previous write was on
  disk, share one write; the write runs on one writer thread, off the event loop);
* ``commit`` writes the group's offsets together with the checkpoint blobs that
  registered ``CheckpointSource`` callbacks return for those partitions, in one atomic
  write, so kernel state and offsets can never disagree after a crash.

Partitioning by key is Kafka's (murmur2), so a key lands in the same partition on both
transports. Transactions (``processing_guarantee="exactly_once"``) are not supported.
"""

from __future__ import annotations

from typing import ClassVar

from engine.runtime.transport.local.base import LogTransport
from engine.runtime.transport.local.consumer import Consumer
from engine.runtime.transport.local.producer import Producer

__all__ = ["Transport"]


class Transport(LogTransport):
    """Faust transport over a ``DurableLog`` directory (URL ``local:///dir``): the
    producer (``producer.py``) and the consumer (``consumer.py``) on the shared log
    (``base.py``)."""

    Consumer: ClassVar[type[Consumer]] = Consumer
    Producer: ClassVar[type[Producer]] = Producer

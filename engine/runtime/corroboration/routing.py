"""The sending side of the corroboration stage: source-rule events and their
partitions' watermarks, routed from the alerts agent to ``<id>-corroboration``.

The sends are handed to the producer as records come, those of one alerts record in one
loop turn (one write on ``local://``, ``engine.runtime.sending``), and awaited together
by ``flush`` before the alerts' offsets commit: one broker round trip per commit, not
per record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from engine.contracts.alerts import AlertEvent, pack_lines
from engine.evaluation.corroboration import groups_of
from engine.runtime.corroboration.host import StageHost
from engine.runtime.corroboration.wire import MARK_INTERVAL_S, MARKS, RS, SEP
from engine.runtime.sending import Outgoing

__all__ = ["Routing"]

log = logging.getLogger(__name__)


class Routing:
    """Routing state and methods of ``CorroborationStage`` (its base class)."""

    topology: StageHost
    topic: Any  # the ``<id>-corroboration`` topic
    clock: Callable[[], float]

    def _init_routing(self) -> None:
        """The sending side's in-memory state (``CorroborationStage._init_state``)."""
        #: Source partition -> the watermark (ms) of the alerts routed so far.
        self._marks: dict[int, int] = {}
        #: Corroboration partition -> the watermarks sent to it so far.
        self._marks_sent: dict[int, dict[int, int]] = {}
        self._marks_round = -MARK_INTERVAL_S  # wall time (s) of the last mark-only round
        #: The rules ``_groups_at`` was computed for, and the partitions of their groups.
        self._groups_for: object = None
        self._groups_at: frozenset[int] = frozenset()
        #: Sends of ``route`` not yet known durable: (partition, value, future; None: the
        #: send itself failed and is to be made again).
        self._in_flight: list[tuple[int, bytes, Awaitable[Any] | None]] = []
        #: Partitions with such a failed send: later records wait behind it, in order.
        self._deferred: set[int] = set()

    async def route(
        self,
        events: Iterable[AlertEvent],
        source: int | None = None,
        watermark: int | None = None,
    ) -> None:
        """Forward the source-rule events among ``events`` to their groups, and the
        ``watermark`` (ms; None: the record had none) of their alerts partition
        ``source`` behind them. Called by the alerts topic's one agent (the
        dispatcher) with the events of one record: a second agent on that topic would
        hold each message until both had acked it, and at shutdown the one that
        stopped first would never ack, leaving the consumer waiting. The sends are not
        awaited here, one broker round trip per record; ``flush`` awaits them before
        the alerts' offsets commit."""
        rules = self.topology.ruleset.corroboration
        lines: dict[int, list[str]] = {}
        for event in events:
            pairs = groups_of(rules, event)
            if pairs:
                body = event.to_json()
                for rule_id, group in pairs:
                    key = f"{rule_id}{SEP}{group}"
                    partition = self.topology.partition_for(key)
                    lines.setdefault(partition, []).append(f"{key}{RS}{body}")
        # The new mark rides behind this record's events (the same records, in order);
        # ``_marks`` takes it only once they are all handed to the producer, so that
        # the timer never sends it ahead of them.
        marks = dict(self._marks)
        if source is not None and watermark is not None:
            marks[source] = max(watermark, marks.get(source, watermark))
        records = []
        for partition, group_lines in lines.items():
            mark_line = self._mark_line(partition, marks)
            for value in pack_lines([*group_lines, *([mark_line] if mark_line else [])]):
                records.append((partition, value))
        await self._send(records)
        self._marks = marks
        if self.clock() - self._marks_round >= MARK_INTERVAL_S:
            await self._send_marks()

    def _mark_line(self, partition: int, marks: dict[int, int]) -> str | None:
        """The line of the watermarks in ``marks`` not yet sent to ``partition``, now
        counted as sent; None when there are none."""
        sent = self._marks_sent.setdefault(partition, {})
        due = {p: w for p, w in marks.items() if w > sent.get(p, w - 1)}
        if not due:
            return None
        sent.update(due)
        return f"{MARKS}{RS}{json.dumps(due)}"

    def _group_partitions(self) -> frozenset[int]:
        """The partitions that hold a group of the current rules: the only ones that
        need watermarks (none without basin rules), however many partitions there are."""
        rules = self.topology.ruleset.corroboration
        if self._groups_for is not rules:
            self._groups_for = rules
            self._groups_at = frozenset(
                self.topology.partition_for(f"{r.rule_id}{SEP}{group}")
                for r in rules
                for group in r.groups
            )
        return self._groups_at

    async def _send_marks(self) -> None:
        """A record of watermarks to each partition that has some not yet sent."""
        self._marks_round = self.clock()
        records = []
        for partition in sorted(self._group_partitions()):
            line = self._mark_line(partition, self._marks)
            if line is not None:
                records.append((partition, line.encode()))
        await self._send(records)

    async def _send(self, records: list[tuple[int, bytes]]) -> None:
        """Hand (partition, value) records to the producer in one loop turn, except
        those behind a failed send to the same partition: kept for ``flush`` (in order).

        Should the producer refuse one (the broker restarting), the records of this
        call are all kept for ``flush`` and their partitions wait behind them; those
        handed over before it are then written twice, which the stage tolerates as it
        does a replay (a station's events no later than its latest are dropped, and a
        watermark only ever moves forward)."""
        if not records:
            return
        futures: list[Awaitable[Any] | None] = [None] * len(records)
        ready = [i for i, (p, _) in enumerate(records) if p not in self._deferred]
        if ready:
            name = self.topic.get_topic_name()
            try:
                handed = await self.topology.hand_over(
                    [Outgoing(name, records[i][1], records[i][0]) for i in ready]
                )
            except Exception as exc:  # e.g. the broker restarting: ``flush`` retries
                log.warning("corroboration send failed (%r), will send again", exc)
                self._deferred.update(records[i][0] for i in ready)
            else:
                for i, fut in zip(ready, handed, strict=True):
                    futures[i] = fut
        self._in_flight.extend((p, v, f) for (p, v), f in zip(records, futures, strict=True))

    async def flush(self) -> None:
        """Returns once every event routed so far is durable on the corroboration topic.

        A send that failed is sent once more and awaited; should that fail too, the
        error propagates, the commit that called this does not happen, and the sends
        not known durable stay for the next one.
        """
        pending, self._in_flight = self._in_flight, []
        try:
            for i, (partition, value, fut) in enumerate(pending):
                try:
                    try:
                        if fut is None:
                            fut = await self.topic.send(value=value, partition=partition)
                        await fut
                    except Exception as exc:
                        log.warning("corroboration send failed (%r), sending again", exc)
                        await (await self.topic.send(value=value, partition=partition))
                except BaseException:  # also cancelled: what is not known durable stays
                    self._in_flight[:0] = [(partition, value, None), *pending[i + 1 :]]
                    raise
        finally:
            # Routed meanwhile behind a failed send, or left failed: still deferred.
            self._deferred = {p for p, _, f in self._in_flight if f is None}

"""The corroboration stage of the topology: alerts re-keyed by group, group state in
Faust tables.

The stations of a basin hash to different telemetry partitions (and, on Kafka, to
different workers), so group rules cannot run in the per-partition processors. Instead
``route`` forwards each source-rule event to ``<id>-corroboration`` under the key
``rule\\x1fgroup``, in the partition Kafka's partitioner gives that key: one record per
partition and alerts record, a line ``key\\x1eevent JSON`` per event; ``corroborate``
consumes that topic, keeps each group's ``GroupState`` and sends the group's alerts
back to ``<id>-alerts``. A replay after a crash re-sends the same events; a station's
events no later than its latest are dropped (``GroupState.take``) and the alerts keep
their idempotency keys, so the dispatcher drops repeats.

Event time: the groups take their events in event time, not in arrival order
(``engine.evaluation.corroboration_buffer`` explains the rule and its bounds). The dispatcher
passes each alerts record's source partition and watermark (``WATERMARK_HEADER``) to
``route``, which forwards the watermarks to each corroboration partition that holds a
group (none without basin rules) as a line
``\\x1dmarks\\x1e{"<partition>": <watermark ms>, ...}`` after the record's events: on the
records it sends anyway, and on a record of its own at most once per ``MARK_INTERVAL_S``
for the partitions that got no events (Faust costs ~0.5-1 ms per record, so never a
record per alert). ``corroborate`` holds the routed events in an ``EventTimeBuffer`` per
partition and applies them once the watermarks have passed them. When only the wall
clock can release held events (every source idle), a timer sends the partition a
``\\x1dtick`` record, at most once per ``MARK_INTERVAL_S``: table writes must happen in
an event of the partition whose changelog holds them.

The state is kept in changelog-backed Faust tables, a small entry per key (what
Faust tables are for; their layout is in ``engine.runtime.corroboration.wire``). This
module is the live stage: the topic, the tables, the agent and its timer, and the
held events; ``engine.runtime.corroboration.groups`` reads the groups' states from the
tables and turns the events a group takes (a late one's recompute included) into its
alerts and the tables' changes.

A group's whole state under one key cost a changelog record the size of the group per
alert, and in a flood the alerts come from thousands of a basin's gauges at once (JSON
encoding was 30 % of a worker's time in ``bench/kafka_e2e.py``). The ``GroupState``
objects are built from the tables once after each rebalance (the tables are recovered
by then) and kept in step with them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from engine.contracts.alerts import AlertEvent, Level
from engine.contracts.ruleset import CorroborationRule
from engine.evaluation.corroboration import GroupState
from engine.evaluation.corroboration_buffer import EventTimeBuffer, Pending
from engine.runtime.corroboration.groups import GroupTables, Write, read_states, take_due, write
from engine.runtime.corroboration.host import StageHost
from engine.runtime.corroboration.routing import Routing
from engine.runtime.corroboration.wire import (
    MARK_INTERVAL_S,
    MARKS,
    RS,
    SEP,
    TABLES,
    TICK,
    pending_key,
)
from engine.runtime.sending import Outgoing

__all__ = ["CorroborationStage"]

log = logging.getLogger(__name__)


class CorroborationStage(Routing):
    """The stage: its topic, tables and agent; ``Routing`` is the sending side."""

    def __init__(self, topology: StageHost) -> None:
        self.topology = topology
        app = topology.app
        self.topic = app.topic(
            f"{app.conf.id}-corroboration",
            key_serializer="raw",
            value_serializer="raw",
            partitions=topology.partitions,
        )
        n = topology.partitions
        self.stations = app.Table(TABLES[0], partitions=n, key_type=str)
        self.firing = app.Table(TABLES[1], partitions=n, key_type=str)
        self.pending = app.Table(TABLES[2], partitions=n, key_type=str)
        self.watermarks = app.Table(TABLES[3], partitions=n, key_type=str)
        self.history = app.Table(TABLES[4], partitions=n, key_type=str)
        app.on_partitions_revoked.connect(self._on_partitions_revoked)
        app.agent(self.topic, name="corroborate")(self._corroborate)
        app.timer(MARK_INTERVAL_S)(self._on_timer)
        self._init_state()

    def _init_state(self, clock: Callable[[], float] = time.monotonic) -> None:
        """The in-memory state; ``clock``: wall seconds, monotonic (tests advance it)."""
        self.clock = clock
        #: ``rule\x1fgroup`` -> its state, as the tables hold it; None: not built yet
        #: (the held events in ``_buffers`` are rebuilt with it).
        self._states: dict[str, GroupState] | None = None
        #: Corroboration partition -> its held events and its sources' watermarks.
        self._buffers: dict[int, EventTimeBuffer] = {}
        #: Events held since the start of the record in hand, not yet in ``pending``:
        #: written at its end if still held (most are let go by the same record's
        #: watermarks, and a write and a delete each cost a changelog record).
        self._unsaved: dict[Pending, tuple[str, str]] = {}
        #: Corroboration partition -> its sources' watermarks as ``watermarks`` holds them.
        self._saved_marks: dict[int, dict[int, int]] = {}
        #: Corroboration partition -> wall time (s) of its last tick sent.
        self._ticked: dict[int, float] = {}
        self._init_routing()

    async def _on_timer(self) -> None:
        """Every ``MARK_INTERVAL_S``: the watermarks of sources that sent no events
        lately, and a tick to each partition of this worker whose held events only
        the wall clock can release now."""
        if self.clock() - self._marks_round >= MARK_INTERVAL_S / 2:
            await self._send_marks()
        name = self.topic.get_topic_name()
        mine = {tp.partition for tp in self.topology.app.consumer.assignment() if tp.topic == name}
        now = self.clock()
        if self._states is None:
            # After a restart or a rebalance the held events are in the table only, and
            # are rebuilt (in the agent, after the tables' recovery) on the next record
            # of their partition: make sure there is one, should the stream be quiet.
            due = {self.topology.partition_for(k.rsplit(SEP, 2)[0]) for k in self.pending}
        else:
            due = set()
            for partition, buffer in self._buffers.items():
                # The same clock reading: a fresh one in ``wake_at`` is always later,
                # and a tick was never due (held basin events stayed held).
                wake = buffer.wake_at(now)
                if wake is not None and wake <= now:
                    due.add(partition)
        ticks = []
        for partition in sorted(due & mine):
            if now - self._ticked.get(partition, -MARK_INTERVAL_S) >= MARK_INTERVAL_S:
                self._ticked[partition] = now
                ticks.append((partition, f"{TICK}{RS}".encode()))
        await self._send(ticks)

    async def _on_partitions_revoked(self, app: Any, revoked: Any, **kwargs: Any) -> None:
        self._states = None  # the partitions we keep are recovered afresh: rebuild then

    def _build(self) -> dict[str, GroupState]:
        """The groups' states and the held events, from the tables."""
        tables = GroupTables(self.stations, self.firing, self.history)
        states = read_states(tables, self._history_ms())
        for buffer in self._buffers.values():
            buffer.clear()
        for pkey, (level, metric) in self.pending.items():
            rule_id, group, station, at = pkey.split(SEP)
            partition = self.topology.partition_for(f"{rule_id}{SEP}{group}")
            self._buffer(partition).add((int(at), rule_id, group, station), (level, metric))
        for held, payload in self._unsaved.items():  # the record in hand's, not in the table
            self._buffer(self.topology.partition_for(SEP.join(held[1:3]))).add(held, payload)
        for partition, saved in self.watermarks.items():
            buffer = self._buffer(int(partition))
            for source, watermark in saved.items():
                buffer.mark(int(source), watermark)
            self._saved_marks[int(partition)] = dict(buffer.watermarks)
        return states

    def _state(self, key: str) -> GroupState:
        if self._states is None:
            self._states = self._build()
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = GroupState(history_ms=self._history_ms())
        return state

    def _history_ms(self) -> int:
        return round(self.topology.corroboration_history_s * 1000)

    def _buffer(self, partition: int) -> EventTimeBuffer:
        buffer = self._buffers.get(partition)
        if buffer is None:
            buffer = self._buffers[partition] = EventTimeBuffer(
                self.topology.partitions,
                allowance_ms=self.topology.lateness_ms,
                idle_s=self.topology.corroboration_idle_s,
                clock=self.clock,
            )
        return buffer

    def _rule(self, rule_id: str) -> CorroborationRule | None:
        return next((r for r in self.topology.ruleset.corroboration if r.rule_id == rule_id), None)

    async def _corroborate(self, stream: Any) -> None:
        async for event in stream.events():
            partition = event.message.partition
            for line in event.value.decode(errors="replace").split("\n"):
                try:
                    await self._take(line, partition)
                except (ValueError, TypeError, KeyError) as exc:
                    # Not a line ``route`` writes (bad bytes, a record of another
                    # version): skipped with its reason; the stream goes on.
                    self.topology.counters["corroboration_bad_lines"] += 1
                    log.error("corroboration: skipped a line (%r): %.200s", exc, line)
                    self._states = None  # in case it failed half-way: rebuild
                except BaseException:
                    self._states = None  # maybe ahead of the tables: rebuild from them
                    raise
            await self._release(partition)

    async def _take(self, line: str, partition: int) -> None:
        """One line of a record of corroboration ``partition``: watermarks, a tick, or
        a routed event, which is held (``pending`` table) until ``_release``."""
        key, sep, body = line.partition(RS)
        if not sep:
            raise ValueError("no key separator")
        buffer = self._built_buffer(partition)
        if key == MARKS:
            for source, watermark in json.loads(body).items():
                buffer.mark(int(source), int(watermark))
            return
        if key == TICK:
            return
        rule_id, group = key.split(SEP, 1)
        if self._rule(rule_id) is None:
            return  # the rule was removed by a reload
        source = AlertEvent.from_json(body)
        last = self._state(key).last.get(source.station)
        if last is not None and source.at <= last:
            return  # taken before: sent again by a partition replayed after a failover
        held: Pending = (source.at, rule_id, group, source.station)
        late = buffer.late
        if buffer.add(held, (source.level, source.metric)):
            self._unsaved[held] = (source.level, source.metric)
        if buffer.late > late:
            self.topology.counters["corroboration_late_events"] += 1
            log.warning(
                "corroboration: %s of %s at %d came after its groups were evaluated past "
                "it; put in its place in their history",
                rule_id,
                source.station,
                source.at,
            )

    async def _release(self, partition: int) -> None:
        """Apply the held events of ``partition`` that the watermarks let go, in event
        time (``engine.evaluation.corroboration_buffer``); then write those still held that the
        record in hand brought to the ``pending`` table.

        A late event (older than what the buffer let go before: a gauge's backlog) is
        put in its place in its group's history (``GroupState.take_all``), which sends
        the group alerts a replay raises there and had not been sent.

        The groups' alerts they raise go out together (one write on ``local://``) and
        are durable before the tables are written: the other way round, a crash between
        the two would restore a state that has the change, replay the event, drop it as
        taken (``GroupState.take``) and never send the alert.
        """
        try:
            buffer = self._built_buffer(partition)
            horizon = buffer.horizon()
            alerts: list[AlertEvent] = []
            tables = GroupTables(self.stations, self.firing, self.history)
            writes: list[Write] = []  # the tables' changes, once the alerts are durable
            applied: list[Pending] = []
            due: dict[str, list[tuple[str, int, Level, str]]] = {}  # by group, in order
            while (item := buffer.pop_due(horizon)) is not None:
                held, (level, metric) = item
                at, rule_id, group, station = held
                key = f"{rule_id}{SEP}{group}"
                due.setdefault(key, []).append((station, at, Level.parse(level), metric))
                if held not in self._unsaved:
                    writes.append((self.pending, pending_key(held), True, None))
                applied.append(held)
            for key, events in due.items():
                rule = self._rule(key.split(SEP, 1)[0])
                if rule is not None:  # else removed by a reload meanwhile
                    raised, changes = take_due(tables, self._state(key), rule, key, events,
                                               self.topology.counters)  # fmt: skip
                    alerts += raised
                    writes += changes
            await self._send_alerts(alerts)
            write(writes)
            for held in applied:
                self._unsaved.pop(held, None)
            for held, payload in self._unsaved.items():
                self.pending[pending_key(held)] = list(payload)
            self._unsaved.clear()
            if buffer.watermarks != self._saved_marks.get(partition):
                # One entry per partition, so that a restart or the next owner knows
                # how far the sources are and need not wait for their next marks (or
                # the idle time, on a stream that has ended) to let held events go.
                self.watermarks[str(partition)] = {str(p): w for p, w in buffer.watermarks.items()}
                self._saved_marks[partition] = dict(buffer.watermarks)
        except BaseException:
            self._states = None  # maybe ahead of the tables: rebuild from them
            raise

    def _built_buffer(self, partition: int) -> EventTimeBuffer:
        """The partition's buffer, with the state rebuilt from the tables if need be."""
        if self._states is None:
            self._states = self._build()
        return self._buffer(partition)

    async def _send_alerts(self, alerts: list[AlertEvent], attempts: int = 5) -> None:
        """Send groups' alerts together and wait until they are durable, retrying a few
        times (a broker restarting) before giving up; a repeat is dropped by the
        dispatcher."""
        if not alerts:
            return
        name = self.topology.alerts.get_topic_name()
        records = [Outgoing(name, a.to_json().encode(), key=a.fingerprint.encode()) for a in alerts]
        for attempt in range(attempts):
            try:
                for fut in await self.topology.hand_over(records):
                    await fut
                return
            except Exception as exc:
                if attempt == attempts - 1:
                    raise
                log.warning("group alert send failed (%r), sending again", exc)
                await asyncio.sleep(0.5 * 2**attempt)

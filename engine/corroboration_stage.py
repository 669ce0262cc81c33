"""The corroboration stage of the topology: alerts re-keyed by group, group state in
Faust tables.

The stations of a basin hash to different telemetry partitions (and, on Kafka, to
different workers), so group rules cannot run in the per-partition processors. Instead
``route`` forwards each source-rule event to ``<id>-corroboration`` under the key
``rule\\x1fgroup``, in the partition Kafka's partitioner gives that key: one record per
partition and alerts record, a line ``key\\x1eevent JSON`` per event; ``corroborate``
consumes that topic, keeps each group's ``GroupState`` and sends the group's alerts
back to ``<id>-alerts``. A replay after a crash re-sends the same events; a station's
events no later than its latest are dropped (``GroupState.apply``) and the alerts keep
their idempotency keys, so the dispatcher drops repeats.

The state is kept in two changelog-backed Faust tables, a small entry per key (what
Faust tables are for): ``corroboration-stations`` maps ``rule\\x1fgroup\\x1fstation``
to ``[entry time or null, time of the station's latest event]`` (ms),
``corroboration-firing`` maps ``rule\\x1fgroup`` to the time the group's alert started.
A group's whole state under one key cost a changelog record the size of the group per
alert, and in a flood the alerts come from thousands of a basin's gauges at once (JSON
encoding was 30 % of a worker's time in ``bench/kafka_e2e.py``). The ``GroupState``
objects are built from the tables once after each rebalance (the tables are recovered
by then) and kept in step with them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any

from engine.alerts import AlertEvent, pack_lines
from engine.corroboration import GroupState, corroboration_event, groups_of

if TYPE_CHECKING:
    from engine.topology import Topology

__all__ = ["TABLES", "CorroborationStage"]

#: The stage's Faust tables; their changelogs are ``<app id>-<name>-changelog``, created
#: with the other topics (``engine.kafka.topics``): Faust itself creates them only when
#: first written, and an agent that writes before its metadata shows the partitions
#: crashes (PartitionsMismatch) half-way through an event.
TABLES = ("corroboration-stations", "corroboration-firing")

log = logging.getLogger(__name__)

_SEP = "\x1f"
_RS = "\x1e"  # between a routed event's key and its JSON (which escapes control chars)


class CorroborationStage:
    def __init__(self, topology: Topology) -> None:
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
        #: ``rule\x1fgroup`` -> its state, as the tables hold it; None: not built yet.
        self._states: dict[str, GroupState] | None = None
        app.on_partitions_revoked.connect(self._on_partitions_revoked)
        app.agent(self.topic, name="corroborate")(self._corroborate)
        #: Sends of ``route`` not yet known durable: (partition, value, future; None: the
        #: send itself failed and is to be made again).
        self._in_flight: list[tuple[int, bytes, Awaitable[Any] | None]] = []
        #: Partitions with such a failed send: later records wait behind it, in order.
        self._deferred: set[int] = set()

    async def route(self, events: Iterable[AlertEvent]) -> None:
        """Forward the source-rule events among ``events`` to their groups. Called by
        the alerts topic's one agent (the dispatcher) with the events of one record: a
        second agent on that topic would hold each message until both had acked it,
        and at shutdown the one that stopped first would never ack, leaving the
        consumer waiting. The sends are not awaited here, one broker round trip per
        record; ``flush`` awaits them before the alerts' offsets commit."""
        rules = self.topology.ruleset.corroboration
        lines: dict[int, list[str]] = {}
        for event in events:
            pairs = groups_of(rules, event)
            if pairs:
                body = event.to_json()
                for rule_id, group in pairs:
                    key = f"{rule_id}{_SEP}{group}"
                    partition = self.topology.partition_for(key)
                    lines.setdefault(partition, []).append(f"{key}{_RS}{body}")
        deferred = self._deferred
        for partition, group_lines in lines.items():
            for value in pack_lines(group_lines):
                fut: Awaitable[Any] | None = None
                if partition not in deferred:  # else after the one before it, in order
                    try:
                        fut = await self.topic.send(value=value, partition=partition)
                    except Exception as exc:  # e.g. the broker restarting: ``flush`` retries
                        log.warning("corroboration send failed (%r), will send again", exc)
                        deferred.add(partition)
                self._in_flight.append((partition, value, fut))

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

    async def _on_partitions_revoked(self, app: Any, revoked: Any, **kwargs: Any) -> None:
        self._states = None  # the partitions we keep are recovered afresh: rebuild then

    def _state(self, key: str) -> GroupState:
        if self._states is None:
            entered: dict[str, dict[str, int]] = {}
            last: dict[str, dict[str, int]] = {}
            for skey, (entry, latest) in self.stations.items():
                group_key, station = skey.rsplit(_SEP, 1)
                last.setdefault(group_key, {})[station] = latest
                if entry is not None:
                    entered.setdefault(group_key, {})[station] = entry
            firing = dict(self.firing.items())
            self._states = {
                k: GroupState(entered.get(k), firing.get(k), last.get(k))
                for k in last.keys() | firing
            }
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = GroupState()
        return state

    async def _corroborate(self, stream: Any) -> None:
        async for event in stream.events():
            for line in event.value.decode(errors="replace").split("\n"):
                try:
                    await self._take(line)
                except (ValueError, TypeError, KeyError) as exc:
                    # Not a line ``route`` writes (bad bytes, a record of another
                    # version): skipped with its reason; the stream goes on.
                    self.topology.counters["corroboration_bad_lines"] += 1
                    log.error("corroboration: skipped a line (%r): %.200s", exc, line)
                    self._states = None  # in case it failed half-way: rebuild
                except BaseException:
                    self._states = None  # maybe ahead of the tables: rebuild from them
                    raise

    async def _take(self, line: str) -> None:
        """One routed event into its group's state.

        A change of the group is sent, and durable, before the state that holds it is
        written to the tables: the other way round, a crash between the two would
        restore a state that has the change, replay the event, drop it as taken
        (``GroupState.apply``) and never send the alert.
        """
        key, sep, body = line.partition(_RS)
        if not sep:
            raise ValueError("no key separator")
        rule_id, group = key.split(_SEP, 1)
        rule = next((r for r in self.topology.ruleset.corroboration if r.rule_id == rule_id), None)
        if rule is None:
            return  # the rule was removed by a reload
        source = AlertEvent.from_json(body)
        state = self._state(key)
        station, firing_since = source.station, state.firing_since
        before = [state.entered.get(station), state.last.get(station)]
        change = state.apply(rule, source)
        if change is not None:
            await self._send_alert(corroboration_event(rule, group, source.metric, change))
        after = [state.entered.get(station), state.last.get(station)]
        _sync(self.stations, f"{key}{_SEP}{station}", before, after)
        _sync(self.firing, key, firing_since, state.firing_since)

    async def _send_alert(self, alert: AlertEvent, attempts: int = 5) -> None:
        """Send a group's alert and wait until it is durable, retrying a few times (a
        broker restarting) before giving up; a repeat is dropped by the dispatcher."""
        for attempt in range(attempts):
            try:
                fut = await self.topology.alerts.send(
                    key=alert.fingerprint.encode(), value=alert.to_json().encode()
                )
                await fut
                return
            except Exception as exc:
                if attempt == attempts - 1:
                    raise
                log.warning("group alert send failed (%r), sending again", exc)
                await asyncio.sleep(0.5 * 2**attempt)


def _sync(table: Any, key: str, before: object, after: object) -> None:
    """Write a changed entry to its table (a changelog record); None deletes it."""
    if after != before:
        if after is None:
            del table[key]
        else:
            table[key] = after

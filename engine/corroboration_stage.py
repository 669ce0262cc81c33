"""The corroboration stage of the topology: alerts re-keyed by group, group state in a
Faust table.

The stations of a basin hash to different telemetry partitions (and, on Kafka, to
different workers), so group rules cannot run in the per-partition processors. Instead
``route`` forwards each source-rule event to ``<id>-corroboration`` keyed by
``rule\\x1fgroup``; ``corroborate`` consumes that topic, keeps each group's
``GroupState`` in a changelog-backed table (small keyed metadata: what Faust tables are
for) and sends the group's alerts back to ``<id>-alerts``. A replay after a crash
re-sends the same events; the state machine is idempotent per station and the alerts
keep their idempotency keys, so the dispatcher drops repeats.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from engine.alerts import AlertEvent
from engine.corroboration import GroupState, corroboration_event, groups_of

if TYPE_CHECKING:
    from engine.topology import Topology

__all__ = ["CorroborationStage"]

log = logging.getLogger(__name__)

_SEP = "\x1f"


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
        self.table = app.Table(
            "corroboration", default=dict, partitions=topology.partitions, key_type=str
        )
        app.agent(self.topic, name="corroborate")(self._corroborate)
        #: Sends of ``route`` not yet known durable: (key, value, future).
        self._in_flight: list[tuple[bytes, bytes, Awaitable[Any]]] = []

    async def route(self, event: AlertEvent, value: bytes) -> None:
        """Forward a source-rule event to its groups. Called by the alerts topic's one
        agent (the dispatcher): a second agent on that topic would hold each message
        until both had acked it, and at shutdown the one that stopped first would never
        ack, leaving the consumer waiting. The sends are not awaited here, one broker
        round trip per alert; ``flush`` awaits them before the alerts' offsets commit."""
        for rule_id, group in groups_of(self.topology.ruleset.corroboration, event):
            key = f"{rule_id}{_SEP}{group}".encode()
            self._in_flight.append((key, value, await self.topic.send(key=key, value=value)))

    async def flush(self) -> None:
        """Returns once every event routed so far is durable on the corroboration topic.

        A send that failed is sent once more and awaited; should that fail too, the
        error propagates, the commit that called this does not happen, and the sends
        not known durable stay for the next one.
        """
        pending, self._in_flight = self._in_flight, []
        for i, (key, value, fut) in enumerate(pending):
            try:
                await fut
            except Exception as exc:
                log.warning("corroboration send failed (%r), sending again", exc)
                try:
                    fut = await self.topic.send(key=key, value=value)
                    await fut
                except BaseException:
                    self._in_flight[:0] = [(key, value, fut), *pending[i + 1 :]]
                    raise

    async def _corroborate(self, stream: Any) -> None:
        async for event in stream.events():
            key = event.key.decode()
            rule_id, group = key.split(_SEP, 1)
            rule = next(
                (r for r in self.topology.ruleset.corroboration if r.rule_id == rule_id), None
            )
            if rule is None:
                continue  # the rule was removed by a reload
            source = AlertEvent.from_json(event.value)
            state = GroupState(self.table[key])
            change = state.apply(rule, source)
            self.table[key] = state.to_dict()
            if change is not None:
                alert = corroboration_event(rule, group, source.metric, change)
                fut = await self.topology.alerts.send(
                    key=alert.fingerprint.encode(), value=alert.to_json().encode()
                )
                await fut

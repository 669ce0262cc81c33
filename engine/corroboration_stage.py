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

from typing import TYPE_CHECKING, Any

from engine.alerts import AlertEvent
from engine.corroboration import GroupState, corroboration_event, groups_of

if TYPE_CHECKING:
    from engine.topology import Topology

__all__ = ["CorroborationStage"]

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

    async def route(self, event: AlertEvent, value: bytes) -> None:
        """Forward a source-rule event to its groups. Called by the alerts topic's one
        agent (the dispatcher): a second agent on that topic would hold each message
        until both had acked it, and at shutdown the one that stopped first would never
        ack, leaving the consumer waiting."""
        for rule_id, group in groups_of(self.topology.ruleset.corroboration, event):
            fut = await self.topic.send(key=f"{rule_id}{_SEP}{group}".encode(), value=value)
            await fut

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

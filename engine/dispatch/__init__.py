"""Alert dispatch: what happens to an alert event after evaluation.

``delivery`` hands each event once to the sinks (``connectors.sinks``), deduplicated by
its idempotency key. Routing, acknowledgement and escalation belong here too.
"""

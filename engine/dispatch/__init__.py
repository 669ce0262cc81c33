"""Alert dispatch: what happens to an alert event after evaluation, who is told what, when.

``delivery`` hands each event once to the sinks (``connectors.sinks``), deduplicated by its
idempotency key. The routing language and the dispatcher's logic (``config``, ``router``,
``groups``, ``inhibit``, ``silences``, ``lifecycle``, ``ratelimit``, ``dispatcher``) are pure
and clock-driven: alert events and people's actions in, ``Notification``s out on
``Dispatcher.tick()``; no I/O except reading the routing file. See engine/dispatch/README.md.
"""

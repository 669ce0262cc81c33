"""Vigil's engine, one subpackage per stage of a reading's path.

Imports run one way (checked by ``lint-imports``, ``.importlinter``):
``tools`` → ``runtime`` → ``evaluation`` | ``dispatch`` → ``contracts``.

- ``contracts``: what crosses a stage boundary: columnar batches and ticks, alert events
  and their idempotency keys, the compiled rule set.
- ``evaluation``: the per-partition processor, rule runners, numba kernels, derived
  metrics, compound, health and corroboration logic; pure computation, no I/O.
- ``dispatch``: alert delivery to the sinks (deduplicated); routing, acknowledgement and
  escalation land here.
- ``runtime``: what moves records: the Faust topology, the gateway, transports, Kafka,
  settings.
- ``tools``: what drives the engine: the ``vigil`` CLI, replay, the demo.
"""

"""The engine's contracts: the types every stage shares and nothing else.

Columnar telemetry batches and ticks (``batch``), alert events with their idempotency
keys and wire format (``alerts``), the compiled rule set that ``rules/`` produces and
evaluation runs (``ruleset``). Imports nothing from the other stages.
"""

"""Connectors: ingest by protocol and delivery sinks, beside the runtime that uses them.

``ingest`` is what every ingest connector shares (micro-batching, acknowledge only after
a durable append, dead letters); ``mqtt/`` is the MQTT connector (SL 651, HJ 212 and
NB-IoT get a package each beside it); ``sinks/`` holds one delivery sink per module.
Connectors import only the engine's contracts (``.importlinter``).
"""

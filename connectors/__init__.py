"""Ingest connectors (MQTT, NB-IoT, SL 651, HJ 212) and delivery sinks."""

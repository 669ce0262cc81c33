"""The processes ``vigil`` starts, each around one ``Topology``.

``gateway`` (``vigil run``): MQTT ingest and the whole topology on the embedded log;
``worker`` (``vigil worker``): the topology on Kafka, with its ``lag`` monitor;
``ingest`` (``vigil ingest``): MQTT into Kafka's telemetry topic.
"""

"""The runtime that moves records: the Faust topology, the gateway, transports, Kafka.

``topology`` wires ingest, the per-partition processors, the corroboration stage and
delivery into one Faust app; ``gateway`` runs it with MQTT ingest on the embedded
``transport``; ``kafka`` holds what only a Kafka cluster needs; ``config`` validates
``vigil.yaml`` once at start.
"""

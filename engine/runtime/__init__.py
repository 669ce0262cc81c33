"""The runtime that moves records: the Faust topology, transports, Kafka, the processes.

``topology`` wires the telemetry, alerts and dead-letter topics, the per-partition
processors (``partitions``: state, order, checkpoints; ``ticks``: the wall clock into
quiet partitions), the ``corroboration`` stage and delivery into one Faust app;
``sending`` is what it writes and how (what goes out together, in one write), with
``batching`` splitting readings into a columnar batch per partition; ``transport`` is
the embedded durable log, ``kafka`` the Kafka plumbing; ``services`` the processes
``vigil`` starts (gateway, Kafka worker and ingest); ``config`` validates
``vigil.yaml`` once at start.
"""

"""The Kafka runtime: topics, checkpoints that move with partitions, ingest, lag, workers.

The topology (``engine.runtime.topology``) is the same as on the embedded transport; this
package holds what only a real Kafka cluster needs.
"""

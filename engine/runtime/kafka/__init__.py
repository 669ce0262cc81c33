"""Kafka plumbing: topics, the fenced consumer and its offset fence, the producer,
checkpoints that move with partitions. The processes that use them are in
``engine.runtime.services``.

The topology (``engine.runtime.topology``) is the same as on the embedded transport; this
package holds what only a real Kafka cluster needs.
"""

"""Evaluation: readings in, alert events out, on one partition's state; no I/O.

``processor`` runs a partition's rules over a batch: ``runners`` (one compiled rule's
kernel state) over the numba ``kernels``, ``derive`` for derived metrics, ``compound``,
``health``, ``events`` (transitions to alert events). ``corroboration`` and
``corroboration_buffer`` are the basin rules' logic and event-time order;
``broker_drops`` turns a broker's drop counter into alerts; ``warmup`` compiles the
kernels ahead of the first batch.
"""

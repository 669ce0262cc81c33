"""Rule runners: one compiled rule's kernel state on one partition.

``factory.runner_for(rule)`` picks the runner: rules on a monotone aggregate that moves toward
their thresholds (``max`` for ``above``, ``min`` for ``below``) use the early-firing
tumbling kernel, which escalates on the reading that crosses a line; every other
aggregate goes through the window chain (``engine.evaluation.kernels.windows`` then
``engine.evaluation.kernels.levels``), evaluated when each window closes.
"""

"""Rule runners: one compiled rule's kernel state on one partition.

``runner_for(rule)`` picks the runner: rules on a monotone aggregate that moves toward
their thresholds (``max`` for ``above``, ``min`` for ``below``) use the early-firing
tumbling kernel, which escalates on the reading that crosses a line; every other
aggregate goes through the window chain (``engine.kernels.windows`` then
``engine.kernels.levels``), evaluated when each window closes.
"""

from engine.runners.base import RawTransition, Runner, runner_for

__all__ = ["RawTransition", "Runner", "runner_for"]

"""How a command reports a problem found at start."""

from __future__ import annotations

import sys

__all__ = ["report"]


def report(exc: Exception) -> int:
    """Print a problem found at start the way an operator can act on it; exit status 2."""
    from rules.errors import RulesInvalid

    lines = exc.lines if isinstance(exc, RulesInvalid) else [str(exc)]
    print("\n".join(lines), file=sys.stderr)
    return 2

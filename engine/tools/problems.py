"""How a command reports a problem found at start."""

from __future__ import annotations

import sys

__all__ = ["report"]


def report(exc: Exception) -> int:
    """Print a problem found at start the way an operator can act on it; exit status 2.

    A file that cannot be opened is one line naming it (``in.csv: No such file or
    directory``), not Python's ``[Errno 2] ...``."""
    from rules.errors import RulesInvalid

    if isinstance(exc, RulesInvalid):
        lines = exc.lines
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        lines = [f"{exc.filename}: {exc.strerror}"]
    else:
        lines = [str(exc)]
    print("\n".join(lines), file=sys.stderr)
    return 2

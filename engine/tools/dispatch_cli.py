"""``vigil dispatch check|test``: validate a routing file; show where an alert would go.

``check FILE...`` prints one ``file:line:col: path: message`` line per problem (exit 1)
or ``ok`` on stderr (exit 0). ``test --config FILE --labels k=v ...`` prints, like
``amtool config routes test``, each route the alert takes (path from the root, its
receivers, grouping, repeat and escalation) and then the receivers it reaches.
"""

from __future__ import annotations

import argparse
import sys

from rules.durations import format_duration_ms

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dispatch`` and its commands to the ``vigil`` command line."""
    dispatch = sub.add_parser("dispatch", help="work with routing files (who is told what)")
    dispatch_sub = dispatch.add_subparsers(
        dest="dispatch_command", required=True, metavar="COMMAND"
    )
    check = dispatch_sub.add_parser(
        "check", help="validate routing files; problems as file:line:col"
    )
    check.add_argument("paths", nargs="+", help="routing files")
    check.set_defaults(func=_check)
    test = dispatch_sub.add_parser("test", help="which receivers an alert with labels reaches")
    test.add_argument("--config", required=True, help="routing file")
    test.add_argument(
        "--labels", nargs="+", required=True, metavar="K=V",
        help="the alert's labels, e.g. domain=flood basin=qiantang level=red",
    )  # fmt: skip
    test.set_defaults(func=_test)


def _check(args: argparse.Namespace) -> int:
    from engine.dispatch.config import read_dispatch_config

    lines = []
    for path in args.paths:
        lines += [str(p) for p in read_dispatch_config(path)[1]]
    for line in lines:
        print(line)
    if not lines:
        print(f"ok: {len(args.paths)} file(s) valid", file=sys.stderr)
    return 1 if lines else 0


def _test(args: argparse.Namespace) -> int:
    from engine.dispatch.config import load_dispatch_config
    from engine.dispatch.router import Router
    from rules.errors import RulesInvalid

    labels = {}
    for item in args.labels:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"--labels: expected name=value, got {item!r}", file=sys.stderr)
            return 2
        labels[name] = value
    try:
        config = load_dispatch_config(args.config)
    except RulesInvalid as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 1
    router = Router(config)
    for match in router.match(labels):
        route = match.route
        print(" > ".join(r.describe() for r in match.path))
        print(f"  receivers: {', '.join(route.receivers)}")
        repeat = {None: "per level", 0: "never"}.get(route.repeat_ms) or _duration(route.repeat_ms)
        print(
            f"  group_by: {', '.join(route.group_by) or '(one group)'}; "
            f"wait {_duration(route.group_wait_ms)}, interval "
            f"{_duration(route.group_interval_ms)}, repeat {repeat}"
        )
        if route.escalation:
            steps = ", ".join(
                f"after {format_duration_ms(s.after_ms)} {'+'.join(s.receivers)}"
                for s in route.escalation
            )
            print(f"  escalation: {steps}")
    print(f"receivers: {', '.join(router.receivers(labels))}")
    return 0


def _duration(ms: int | None) -> str:
    return format_duration_ms(ms) if ms else "0s"

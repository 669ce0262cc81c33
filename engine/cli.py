"""The ``vigil`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _run(args: argparse.Namespace) -> int:
    from engine.config import ConfigError, load_settings
    from rules.errors import RulesInvalid

    try:
        settings = load_settings(args.config)
        from engine.gateway import Gateway

        gateway = Gateway(settings)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except RulesInvalid as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 2
    gateway.run(loglevel=args.loglevel)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from engine.demo import run_demo

    return run_demo(duration_s=args.duration, keep=args.keep)


def _rules_check(args: argparse.Namespace) -> int:
    from rules.api import check_paths

    lines = check_paths(args.paths, args.stations)
    for line in lines:
        print(line)
    if not lines:
        print(f"ok: {len(args.paths)} file(s) valid", file=sys.stderr)
    return 1 if lines else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vigil",
        description="Real-time stream processing for flood, dam-safety and air-quality telemetry.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="a river flood end to end: mosquitto, the engine, a gauge simulator"
    )
    demo.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    demo.add_argument("--keep", action="store_true", help="keep the demo's data directory")
    demo.set_defaults(func=_demo)

    run = sub.add_parser("run", help="run the gateway service (MQTT ingest, rules, dispatch)")
    run.add_argument("--config", required=True, help="settings file, e.g. vigil.yaml")
    run.add_argument(
        "--loglevel", default="info", choices=["crit", "error", "warn", "info", "debug"]
    )
    run.set_defaults(func=_run)

    rules = sub.add_parser("rules", help="work with rule files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    check = rules_sub.add_parser("check", help="validate rule files; problems as file:line:col")
    check.add_argument("paths", nargs="+", help="rule files")
    check.add_argument("--stations", help="station registry (YAML or CSV) for semantic checks")
    check.set_defaults(func=_rules_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

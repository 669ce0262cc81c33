"""The ``vigil`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

from engine.tools.problems import report
from engine.tools.replay_commands import add_input_args, replay_command, rules_diff_command

__all__ = ["main"]


def _run(args: argparse.Namespace) -> int:
    from engine.runtime.config import ConfigError, load_settings
    from engine.runtime.transport.log import LogDamaged, LogNoSpace
    from rules.errors import RulesInvalid

    try:
        settings = load_settings(args.config)
        _numba_cache(settings.data_dir)
        from engine.runtime.services.datalock import DataDirInUse
        from engine.runtime.services.gateway import Gateway

        try:
            gateway = Gateway(settings, config_path=Path(args.config))
        except DataDirInUse as exc:
            print(exc, file=sys.stderr)
            return 2
    except (ConfigError, RulesInvalid) as exc:
        return report(exc)
    except LogDamaged as exc:
        from engine.tools.data_cli import damaged_message

        print(damaged_message(settings.data_dir, exc.detail, args.config), file=sys.stderr)
        return 2
    except LogNoSpace as exc:
        print(
            f"vigil: no space left on the filesystem of {settings.data_dir}: the log cannot "
            f"open ({exc.detail}). Free some space: the gateway then starts, its ingest paused "
            "until storage.min_free_mb are free (README: Storage).",
            file=sys.stderr,
        )
        return 1  # unlike damage, a restart fixes it once there is space
    gateway.run(loglevel=args.loglevel)
    return 0


def _numba_cache(data_dir: Path | None) -> None:
    """Where numba caches its compiled kernels, chosen before numba is imported.

    By default numba writes beside the installed sources or under ``~/.cache``; a
    service user can write neither (``cannot cache function ...: no locator
    available``). Order: ``NUMBA_CACHE_DIR`` as given; systemd's ``CACHE_DIRECTORY``;
    the gateway's data directory; else numba's default when it is writable, else a
    folder of this user's under the temporary directory.
    """
    import os
    import tempfile

    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    cache = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if cache:
        target = Path(cache) / "numba"
    elif data_dir is not None:
        target = data_dir.resolve() / "cache" / "numba"
    else:
        import engine

        home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        if os.access(Path(engine.__file__).parent, os.W_OK) or os.access(home_cache, os.W_OK):
            return
        target = Path(tempfile.gettempdir()) / f"vigil-numba-{os.getuid()}"
    os.environ["NUMBA_CACHE_DIR"] = str(target)


def _worker(args: argparse.Namespace) -> int:
    from engine.runtime.config import ConfigError, load_settings
    from rules.errors import RulesInvalid

    try:
        settings = load_settings(args.config)
        from engine.runtime.services.worker import KafkaWorker

        worker = KafkaWorker(
            settings, args.broker, web_port=args.web_port, replication=args.replication
        )
    except (ConfigError, ValueError, RulesInvalid) as exc:
        return report(exc)
    worker.run(loglevel=args.loglevel)
    return 0


def _ingest_mqtt(args: argparse.Namespace) -> int:
    import asyncio

    from engine.runtime.config import ConfigError, load_settings
    from engine.runtime.services.ingest import serve_mqtt_ingest
    from rules.errors import RulesInvalid

    if not args.broker.startswith("kafka://"):
        print(f"vigil ingest needs a kafka:// broker URL, got {args.broker!r}", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config)
        asyncio.run(
            serve_mqtt_ingest(
                settings, args.broker, replication=args.replication, web_port=args.web_port
            )
        )
    except (ConfigError, RulesInvalid) as exc:
        return report(exc)
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.nbiot:
        from engine.tools.demo_nbiot import run_nbiot_demo

        return run_nbiot_demo(duration_s=args.duration, keep=args.keep)
    from engine.tools.demo import run_demo

    return run_demo(duration_s=args.duration, keep=args.keep)


def _rules_check(args: argparse.Namespace) -> int:
    from rules.cli import check_main

    return check_main(args.paths, args.stations)


def _rules_test(args: argparse.Namespace) -> int:
    from engine.tools.rule_tests import run_test_files

    return run_test_files(args.files, sys.stdout)


def _decode(args: argparse.Namespace) -> int:
    import json

    from connectors.decode_json import Sl651Lines, hj212_json

    lines = args.frames or [line for line in sys.stdin if line.strip()]
    sl651 = Sl651Lines()
    rejected = False
    for line in lines:
        docs = sl651.decode(line) if args.protocol == "sl651" else [hj212_json(line)]
        for doc in docs:
            rejected |= not doc["ok"]
            print(json.dumps(doc, ensure_ascii=False), flush=True)
    return 1 if rejected else 0


def _add_log_format(parser: argparse.ArgumentParser) -> None:
    """``--log-format`` after the command too (``vigil run --log-format json``)."""
    parser.add_argument(
        "--log-format", choices=["human", "json"], default=argparse.SUPPRESS,
        help="human lines (default) or one JSON object per line, on stderr",
    )  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vigil",
        description="Real-time stream processing for flood, dam-safety and air-quality telemetry.",
    )
    parser.add_argument("--version", action="version", version=f"vigil {_version()}")
    parser.add_argument(
        "--log-format", choices=["human", "json"], default="human",
        help="human lines (default) or one JSON object per line, on stderr",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="a river flood end to end: mosquitto, the engine, a gauge simulator"
    )
    demo.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    demo.add_argument("--keep", action="store_true", help="keep the demo's data directory")
    demo.add_argument(
        "--nbiot", action="store_true",
        help="instead: NB-IoT waterlogging sensors over CoAP and CTWing push, registry store",
    )  # fmt: skip
    demo.set_defaults(func=_demo)

    run = sub.add_parser("run", help="run the gateway service (MQTT ingest, rules, dispatch)")
    run.add_argument("--config", required=True, help="settings file, e.g. vigil.yaml")
    run.add_argument(
        "--loglevel", default="info", choices=["crit", "error", "warn", "info", "debug"]
    )
    _add_log_format(run)
    run.set_defaults(func=_run)

    worker = sub.add_parser("worker", help="run the topology as a Kafka consumer-group member")
    worker.add_argument("--config", required=True, help="settings file, e.g. vigil.yaml")
    worker.add_argument("--broker", required=True, help="kafka://host:port[,host:port...]")
    worker.add_argument(
        "--web-port",
        type=int,
        help="web port: /metrics, /healthz, /readyz, /vigil/status, /vigil/lag/",
    )
    worker.add_argument("--replication", type=int, default=1, help="replication of new topics")
    worker.add_argument(
        "--loglevel", default="info", choices=["crit", "error", "warn", "info", "debug"]
    )
    _add_log_format(worker)
    worker.set_defaults(func=_worker)

    ingest = sub.add_parser("ingest", help="ingest only: produce telemetry to Kafka")
    ingest_sub = ingest.add_subparsers(dest="ingest_command", required=True, metavar="SOURCE")
    ingest_mqtt = ingest_sub.add_parser("mqtt", help="MQTT (QoS 1) -> Kafka telemetry batches")
    ingest_mqtt.add_argument("--config", required=True, help="settings file, e.g. vigil.yaml")
    ingest_mqtt.add_argument("--broker", required=True, help="kafka://host:port[,host:port...]")
    ingest_mqtt.add_argument("--replication", type=int, default=1, help="replication of new topics")
    ingest_mqtt.add_argument(
        "--web-port", type=int,
        help="web port: /metrics, /healthz, /readyz (0: any free port; default: none)",
    )  # fmt: skip
    ingest_mqtt.set_defaults(func=_ingest_mqtt)

    replay = sub.add_parser("replay", help="backtest rules over a CSV of readings")
    replay.add_argument("--rules", required=True, action="append", help="rule file (repeatable)")
    replay.add_argument("--stations", required=True, help="station registry (YAML or CSV)")
    replay.add_argument(
        "--alerts-out", help="write the alert events here as JSON lines (- : standard output)"
    )
    replay.add_argument(
        "--metrics-out", help="write every closed window's value here, CSV (- : standard output)"
    )
    replay.add_argument(
        "--strict", action="store_true",
        help="exit 1 when rows were skipped, readings matched no station or rule, or none came",
    )  # fmt: skip
    add_input_args(replay)
    replay.set_defaults(func=replay_command)

    decode = sub.add_parser(
        "decode", help="decode SL 651 / HJ 212 frames to JSON; exit 1 if any is rejected"
    )
    decode.add_argument("protocol", choices=["sl651", "hj212"])
    decode.add_argument(
        "frames", nargs="*", help="frames (SL 651 in hex, HJ 212 as text); default: stdin"
    )
    decode.set_defaults(func=_decode)

    rules = sub.add_parser("rules", help="work with rule files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    check = rules_sub.add_parser(
        "check",
        help="validate rule files, station registries and rule tests; problems as file:line:col",
    )
    check.add_argument(
        "paths", nargs="+",
        help="files (rule files, station registries and rule tests, told apart by content) "
        "or folders of them",
    )  # fmt: skip
    check.add_argument("--stations", help="station registry (YAML or CSV) for semantic checks")
    check.set_defaults(func=_rules_check)
    diff = rules_sub.add_parser(
        "diff",
        help="which alerts a rule change adds, removes or moves (exit 1 when any, 0 when "
        "none, 3 with --strict when the input was not wholly read)",
    )
    diff.add_argument("old", help="the rule file as it is")
    diff.add_argument("new", help="the rule file as proposed")
    diff.add_argument("--stations", required=True, help="station registry (YAML or CSV)")
    diff.add_argument(
        "--strict", action="store_true",
        help="exit 3 when rows were skipped, readings matched no station or rule of either "
        "version, or none came (whether or not anything changed)",
    )  # fmt: skip
    add_input_args(diff)
    diff.set_defaults(func=rules_diff_command)
    test = rules_sub.add_parser(
        "test", help="run rule tests (readings in, expected alerts out); exit 1 on a mismatch"
    )
    test.add_argument("files", nargs="+", help="rule test files (YAML with 'tests:')")
    test.set_defaults(func=_rules_test)

    from engine.tools.dispatch_cli import add_parser as add_dispatch_parser
    from engine.tools.observe_cli import add_parser as add_observe_parser

    add_dispatch_parser(sub)
    from engine.tools.alerts_cli import add_parser as add_alerts_parser

    add_alerts_parser(sub)
    from engine.tools.registry_cli import add_parser as add_registry_parser

    add_registry_parser(sub)
    add_observe_parser(sub)
    from engine.tools.data_cli import add_parser as add_data_parser

    add_data_parser(sub)
    return parser


_LEVELS = {"crit": "CRITICAL", "error": "ERROR", "warn": "WARNING", "info": "INFO",
           "debug": "DEBUG"}  # fmt: skip


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vigil")
    except PackageNotFoundError:  # run from a tree that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "run":  # run picks its data directory once it has read the settings
        _numba_cache(None)
    from engine.runtime.logs import configure_logging

    configure_logging(args.log_format, _LEVELS[getattr(args, "loglevel", "info")])
    if args.command == "alerts":
        from engine.tools.alerts_cli import run

        return run(args)
    if args.command == "registry":
        from engine.tools.registry_cli import run as run_registry

        return run_registry(args)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

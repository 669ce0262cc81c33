"""The ``vigil`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.replay import MetricRow
    from engine.ruleset import RuleSet

__all__ = ["main"]


def _report(exc: Exception) -> int:
    """Print a problem found at start the way an operator can act on it; exit status 2."""
    from rules.errors import RulesInvalid

    lines = exc.lines if isinstance(exc, RulesInvalid) else [str(exc)]
    print("\n".join(lines), file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from engine.config import ConfigError, load_settings
    from rules.errors import RulesInvalid

    try:
        settings = load_settings(args.config)
        from engine.gateway import Gateway

        gateway = Gateway(settings)
    except (ConfigError, RulesInvalid) as exc:
        return _report(exc)
    gateway.run(loglevel=args.loglevel)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from engine.config import ConfigError, load_settings
    from rules.errors import RulesInvalid

    try:
        settings = load_settings(args.config)
        from engine.kafka.worker import KafkaWorker

        worker = KafkaWorker(
            settings, args.broker, web_port=args.web_port, replication=args.replication
        )
    except (ConfigError, ValueError, RulesInvalid) as exc:
        return _report(exc)
    worker.run(loglevel=args.loglevel)
    return 0


def _ingest_mqtt(args: argparse.Namespace) -> int:
    import asyncio

    from engine.config import ConfigError, load_settings
    from engine.kafka.ingest import serve_mqtt_ingest
    from rules.errors import RulesInvalid

    if not args.broker.startswith("kafka://"):
        print(f"vigil ingest needs a kafka:// broker URL, got {args.broker!r}", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config)
        asyncio.run(serve_mqtt_ingest(settings, args.broker, replication=args.replication))
    except (ConfigError, RulesInvalid) as exc:
        return _report(exc)
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


def _compile(rules: list[str], stations: str) -> RuleSet:
    from rules.api import load_ruleset

    return load_ruleset(rules, stations, "en").ruleset


def _replay(args: argparse.Namespace) -> int:
    from connectors.sinks.console import format_event
    from engine.replay import computed_values, read_readings, replay
    from rules.errors import RulesInvalid

    try:
        ruleset = _compile(args.rules, args.stations)
        readings, problems = read_readings(args.input, args.station, args.metric, args.wide)
    except (RulesInvalid, OSError, ValueError) as exc:
        return _report(exc)
    for line in problems:
        print(line, file=sys.stderr)
    events = replay(ruleset, readings)
    for event in events:
        print(format_event(event))
    if args.alerts_out:
        with open(args.alerts_out, "w", encoding="utf-8") as f:
            f.writelines(e.to_json() + "\n" for e in events)
    if args.metrics_out:
        _write_metrics(args.metrics_out, computed_values(ruleset, readings))
    print(
        f"{len(readings)} readings, {len(events)} alert events, {len(problems)} rows skipped",
        file=sys.stderr,
    )
    return 0


def _write_metrics(path: str, rows: list[MetricRow]) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["source", "station", "metric", "kind", "time", "value", "detail"])
        for r in rows:
            out.writerow([r.source, r.station, r.metric, r.kind, _ms(r.ts), f"{r.value:.6g}",
                          r.detail])  # fmt: skip


def _rules_diff(args: argparse.Namespace) -> int:
    from engine.replay import diff_alerts, read_readings, replay
    from rules.errors import RulesInvalid

    try:
        old = _compile([args.old], args.stations)
        new = _compile([args.new], args.stations)
        readings, problems = read_readings(args.input, args.station, args.metric, args.wide)
    except (RulesInvalid, OSError, ValueError) as exc:
        return _report(exc)
    for line in problems:
        print(line, file=sys.stderr)
    diff = diff_alerts(replay(old, readings), replay(new, readings))
    for e in diff.added:
        print(f"+ {_ms(e.at)} {e.rule_id} {e.station} {e.previous_level}->{e.level} {e.value:g}")
    for e in diff.removed:
        print(f"- {_ms(e.at)} {e.rule_id} {e.station} {e.previous_level}->{e.level} {e.value:g}")
    for o, n in diff.moved:
        print(f"~ {_ms(o.at)} -> {_ms(n.at)} {n.rule_id} {n.station} {n.previous_level}->{n.level}")
    print(
        f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.moved)} moved, "
        f"{diff.unchanged} unchanged",
        file=sys.stderr,
    )
    return 0


def _ms(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")


def _add_input_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="CSV: station,metric,ts,value")
    parser.add_argument("--station", help="station id, for a CSV without a station column")
    parser.add_argument("--metric", help="metric name, for a CSV without a metric column")
    parser.add_argument(
        "--wide", action="store_true",
        help="one column per metric (timestamp,station,PM2.5,...): every numeric cell is a reading",
    )  # fmt: skip


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

    worker = sub.add_parser("worker", help="run the topology as a Kafka consumer-group member")
    worker.add_argument("--config", required=True, help="settings file, e.g. vigil.yaml")
    worker.add_argument("--broker", required=True, help="kafka://host:port[,host:port...]")
    worker.add_argument("--web-port", type=int, help="Faust web port (serves /vigil/lag/)")
    worker.add_argument("--replication", type=int, default=1, help="replication of new topics")
    worker.add_argument(
        "--loglevel", default="info", choices=["crit", "error", "warn", "info", "debug"]
    )
    worker.set_defaults(func=_worker)

    ingest = sub.add_parser("ingest", help="ingest only: produce telemetry to Kafka")
    ingest_sub = ingest.add_subparsers(dest="ingest_command", required=True, metavar="SOURCE")
    ingest_mqtt = ingest_sub.add_parser("mqtt", help="MQTT (QoS 1) -> Kafka telemetry batches")
    ingest_mqtt.add_argument("--config", required=True, help="settings file, e.g. vigil.yaml")
    ingest_mqtt.add_argument("--broker", required=True, help="kafka://host:port[,host:port...]")
    ingest_mqtt.add_argument("--replication", type=int, default=1, help="replication of new topics")
    ingest_mqtt.set_defaults(func=_ingest_mqtt)

    replay = sub.add_parser("replay", help="backtest rules over a CSV of readings")
    replay.add_argument("--rules", required=True, action="append", help="rule file (repeatable)")
    replay.add_argument("--stations", required=True, help="station registry (YAML or CSV)")
    replay.add_argument("--alerts-out", help="write the alert events here as JSON lines")
    replay.add_argument("--metrics-out", help="write every closed window's value here (CSV)")
    _add_input_args(replay)
    replay.set_defaults(func=_replay)

    rules = sub.add_parser("rules", help="work with rule files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    check = rules_sub.add_parser("check", help="validate rule files; problems as file:line:col")
    check.add_argument("paths", nargs="+", help="rule files")
    check.add_argument("--stations", help="station registry (YAML or CSV) for semantic checks")
    check.set_defaults(func=_rules_check)
    diff = rules_sub.add_parser("diff", help="which alerts a rule change adds, removes or moves")
    diff.add_argument("old", help="the rule file as it is")
    diff.add_argument("new", help="the rule file as proposed")
    diff.add_argument("--stations", required=True, help="station registry (YAML or CSV)")
    _add_input_args(diff)
    diff.set_defaults(func=_rules_diff)

    from dispatch.cli import add_parser as add_dispatch_parser

    add_dispatch_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

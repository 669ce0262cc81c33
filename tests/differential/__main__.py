"""Run one in-process comparison and print its differences, to study a failure.

    .venv/bin/python -m tests.differential --stations 1 --hours 6 --late-starters 0 \\
        --backlogs 1 --outages 0 --duplicate-rate 0 --shuffle-rate 0 --bursts 0 \\
        --partitions 1 --plan 0 [--events] [--rules flood.river_level ...]

Every ``TrafficSpec`` field is an option (``--max-backlog-h``, ``--seed`` ...); the
defaults are the realistic run's. ``--events`` prints the traffic's messages and the
events of both sides; ``--rules`` limits the comparison to those rule ids.
"""

from __future__ import annotations

import argparse
import dataclasses

from engine.tools.replay import replay
from rules.api import load_ruleset
from rules.registry import load_registry
from tests.differential.compare import compare, cutoff, timed_compounds
from tests.differential.live_model import run_live
from tests.traffic import REGISTRY, RULES, TrafficSpec, generate


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.differential")
    for f in dataclasses.fields(TrafficSpec):
        name = "--" + f.name.replace("_", "-")
        parser.add_argument(name, type=type(f.default), default=f.default)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--plan", type=int, default=0)
    parser.add_argument("--lateness-ms", type=int, default=10 * 60_000)
    parser.add_argument("--crash-rate", type=float, default=0.02, help="restarts per step")
    parser.add_argument("--rules", nargs="*", help="compare only these rule ids")
    parser.add_argument("--events", action="store_true", help="print messages and events")
    args = parser.parse_args()
    spec = TrafficSpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrafficSpec)})
    ruleset = load_ruleset([str(RULES)], load_registry(REGISTRY)).ruleset
    traffic = generate(spec)
    live = run_live(
        ruleset,
        traffic,
        partitions=args.partitions,
        lateness_ms=args.lateness_ms,
        plan=args.plan,
        crash_rate=args.crash_rate,
    )
    wanted = (
        set(args.rules)
        if args.rules
        else {r.rule_id for r in ruleset.rules}
        | {c.rule_id for c in ruleset.compound}
        | {f"{r.rule_id}#{k}" for r in ruleset.rules for k in ("qc", "silent")}
    )
    live_events = [e for e in live.events if e.rule_id in wanted]
    expected = [e for e in replay(ruleset, traffic.readings()) if e.rule_id in wanted]
    print(traffic.describe())
    if args.events:
        for m in traffic.messages:
            if m.kind != "live":
                print(f"  {m.arrival_ms} {m.kind} {m.station}/{m.metric} {m.readings[:3]}...")
        print("live:", *[(e.rule_id, e.station, e.previous_level, e.level, e.at, e.started_at)
                         for e in live_events], sep="\n  ")  # fmt: skip
        print("replay:", *[(e.rule_id, e.station, e.previous_level, e.level, e.at, e.started_at)
                           for e in expected], sep="\n  ")  # fmt: skip
    rejected: dict[str, int] = {}
    for *_, reason in live.rejected:
        rejected[reason.split(":")[0]] = rejected.get(reason.split(":")[0], 0) + 1
    print(f"live: {live.batches} batches, {live.restarts} restarts, rejected {rejected}")
    print(
        compare(
            live_events,
            expected,
            cutoff(traffic.end_ms, args.lateness_ms),
            traffic.disorder_ms,
            timed_compounds(ruleset),
        ).report(200)
    )


if __name__ == "__main__":
    main()

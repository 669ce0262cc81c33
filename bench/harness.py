"""What the end-to-end gateway benchmarks share: a registry of river gauges under one
level rule, the gateway's settings around them (or around a given registry and rules),
``vigil run`` started on those, the gateway's memory and CPU time read from ``/proc``,
and the result reported.

The rule takes each gauge's hourly maximum ``water_level`` and fires above the
station's ``warning_level`` (``WARNING_LEVEL_M``, far above any ordinary reading: only a
reading a benchmark means to fire crosses it), with no ``for``: on the reading itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "WARNING_LEVEL_M",
    "cpu_s",
    "gauge",
    "report",
    "rss_mib",
    "start_gateway",
    "write_config",
    "write_settings",
]

WARNING_LEVEL_M = 5000.0


def _level_rule(rule_id: str) -> str:
    return f"""\
version: 1
rules:
  - id: {rule_id}
    select: {{kind: river_gauge}}
    metric: water_level
    unit: m
    window: {{size: 1h, aggregate: max}}
    levels:
      red: {{above: station.warning_level}}
    stale: 1d
    summary: {{zh: "{{station}} {{value}}", en: "{{station}} {{value}}"}}
"""


def gauge(
    station_id: str, metrics: Mapping[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    """A river gauge reporting hourly: ``metrics`` (metric -> unit; default
    ``water_level`` in m), plus ``extra`` entries (a field protocol's identity)."""
    return {
        "id": station_id,
        "kind": "river_gauge",
        "report_interval": "1h",
        "metrics": dict(metrics or {"water_level": "m"}),
        "warning_level": WARNING_LEVEL_M,
        **extra,
    }


def write_config(
    workdir: Path,
    stations: list[dict[str, Any]],
    rule_id: str,
    mqtt_port: int,
    mqtt: Mapping[str, Any] | None = None,
    **settings: Any,
) -> Path:
    """``stations.yaml``, ``rules.yaml`` (the level rule, as ``rule_id``) and
    ``vigil.yaml`` on them (``write_settings``) in ``workdir``; returns the last."""
    (workdir / "stations.yaml").write_text(yaml.safe_dump({"stations": stations}))
    (workdir / "rules.yaml").write_text(_level_rule(rule_id))
    return write_settings(
        workdir, workdir / "stations.yaml", [workdir / "rules.yaml"], mqtt_port, mqtt, **settings
    )


def write_settings(
    workdir: Path,
    stations: Path,
    rules: list[Path],
    mqtt_port: int,
    mqtt: Mapping[str, Any] | None = None,
    **settings: Any,
) -> Path:
    """``vigil.yaml`` in ``workdir`` on the registry ``stations`` and the rule files
    ``rules``; returns its path. The gateway keeps its data and alerts file in
    ``workdir``; ``mqtt`` adds to its MQTT settings (a broker on loopback at
    ``mqtt_port``), ``settings`` replace or add top-level ones."""
    config: dict[str, Any] = {
        "app_id": "vigil-bench", "data_dir": str(workdir / "data"), "partitions": 2,
        "stations": str(stations), "rules": [str(r) for r in rules],
        "alerts_jsonl": str(workdir / "alerts.jsonl"), "console": False,
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "client_id": "vigil-bench",
                 **(mqtt or {})},
        **settings,
    }  # fmt: skip
    path = workdir / "vigil.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_gateway(
    config: Path, workdir: Path, tree: Path | None = None, profile: Path | None = None
) -> subprocess.Popen[str]:
    """``vigil run`` on ``config``, warnings only, its stderr in ``workdir/engine.log``
    and its stdout piped (for the lines it announces); the code of ``tree`` (another
    checkout, or this one to run in it) when given, else this one's; under cProfile,
    its stats written to ``profile``, when given."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return subprocess.Popen(
        [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []),
         "-m", "engine.tools.cli", "run", "--config", str(config), "--loglevel", "warn"],
        stdout=subprocess.PIPE, stderr=(workdir / "engine.log").open("w"), text=True,
        env=env, cwd=tree,
    )  # fmt: skip


def report(result: Mapping[str, Any], path: Path | None) -> None:
    """Print ``result`` as JSON, and write it to ``path`` too when given."""
    print(json.dumps(result, indent=2))
    if path:
        path.write_text(json.dumps(result, indent=2))


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory (MiB) of process ``pid`` (this one by default), from ``/proc``."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

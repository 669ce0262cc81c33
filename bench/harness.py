"""What the end-to-end gateway benchmarks share: a registry of river gauges under one
level rule, the gateway's settings around them, ``vigil run`` started on those, and the
result reported.

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

__all__ = ["WARNING_LEVEL_M", "gauge", "report", "start_gateway", "write_config"]

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
    ``vigil.yaml`` in ``workdir``; returns the last. The gateway keeps its data and
    alerts file in ``workdir``; ``mqtt`` adds to its MQTT settings (a broker on
    loopback at ``mqtt_port``), ``settings`` replace or add top-level ones."""
    (workdir / "stations.yaml").write_text(yaml.safe_dump({"stations": stations}))
    (workdir / "rules.yaml").write_text(_level_rule(rule_id))
    config: dict[str, Any] = {
        "app_id": "vigil-bench", "data_dir": str(workdir / "data"), "partitions": 2,
        "stations": str(workdir / "stations.yaml"), "rules": [str(workdir / "rules.yaml")],
        "alerts_jsonl": str(workdir / "alerts.jsonl"), "console": False,
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "client_id": "vigil-bench",
                 **(mqtt or {})},
        **settings,
    }  # fmt: skip
    path = workdir / "vigil.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_gateway(config: Path, workdir: Path, tree: Path | None = None) -> subprocess.Popen[str]:
    """``vigil run`` on ``config``, warnings only, its stderr in ``workdir/engine.log``
    and its stdout piped (for the lines it announces); the code of ``tree`` (another
    checkout) when given, else this one's."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return subprocess.Popen(
        [sys.executable, "-m", "engine.tools.cli", "run", "--config", str(config),
         "--loglevel", "warn"],
        stdout=subprocess.PIPE, stderr=(workdir / "engine.log").open("w"), text=True,
        env=env, cwd=tree,
    )  # fmt: skip


def report(result: Mapping[str, Any], path: Path | None) -> None:
    """Print ``result`` as JSON, and write it to ``path`` too when given."""
    print(json.dumps(result, indent=2))
    if path:
        path.write_text(json.dumps(result, indent=2))

"""End-to-end baseline: what a typical Faust user writes, against Vigil's processor.

Both consume the same readings from the embedded log (``local://``) in one process on
one core, and both keep a 15-min tumbling maximum per sensor and compare it with a
threshold:

* **textbook Faust**: one record per reading (JSON), an agent that updates a Faust
  windowed table (``app.Table(...).tumbling(900).relative_to_stream()``) per reading;
* **Vigil**: the same readings as columnar batches of ``--batch`` readings, one record
  per batch, through the real topology (``engine.runtime.topology.Topology``) with the flood
  rule (QC, window, levels, health).

Each side is a worker process started on a log pre-filled with the readings, so only
consumption is timed: from the first record the agent sees to the last one. Readings/s
= readings / that span. Run::

    NUMBA_CACHE_DIR=$PWD/.cache/numba .venv/bin/python bench/faust_baseline.py \\
        --readings 200000 --sensors 10000 --batch 10000 --repeat 3

The machine is 2 shared cores: quote the medians and the ratio, not single figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.contracts.batch import TelemetryBatch  # noqa: E402
from engine.runtime.transport.log import Append, DurableLog  # noqa: E402

T0 = 1_719_763_200_000
STATIONS_FILE = "stations.yaml"
RULES_FILE = "rules.yaml"

TEXTBOOK = """
import json, sys, time
import faust
data, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
app = faust.App("textbook", broker=f"local://{data}", store="memory://", datadir=f"{data}/faust",
                topic_partitions=1, web_enabled=False, autodiscover=False)
readings = app.topic("readings", value_type=bytes, value_serializer="raw")
wmax = app.Table("wmax", default=float, partitions=1)
wmax = wmax.tumbling(900, expires=7200).relative_to_stream()
alerts = 0
seen = 0
first = None
@app.agent(readings)
async def evaluate(stream):
    global seen, first, alerts
    async for raw in stream:
        if first is None:
            first = time.perf_counter()
        r = json.loads(raw)
        key = r["station"]
        current = max(wmax[key].current(), r["value"])
        wmax[key] = current
        if current >= 3.0:
            alerts += 1
        seen += 1
        if seen == n:
            with open(out, "w") as f:
                json.dump({"seconds": time.perf_counter() - first, "readings": seen}, f)
sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
app.main()
"""

VIGIL = """
import json, sys, time
from pathlib import Path
import faust
from engine.runtime.topology import Topology
from rules.api import load_ruleset
data, n, out, rules, stations = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ruleset = load_ruleset([rules], stations, "en").ruleset
# Load the compiled kernels (numba's cache) before timing, as a long-running worker has.
from engine.contracts.batch import TelemetryBatch
from engine.evaluation.processor import PartitionProcessor
warm = TelemetryBatch.from_rows([("S000000", "water_level", 0, 1.0)])
PartitionProcessor(ruleset).process(warm, 0)
topo = Topology(app_id="vigil-bench", broker=f"local://{data}", partitions=1, ruleset=ruleset,
                sinks=[], data_dir=Path(data), lateness_ms=0)
state = {"seen": 0, "first": None}
original = topo.processor
def timed(partition):
    if state["first"] is None:
        state["first"] = time.perf_counter()
    return original(partition)
topo.processor = timed
@topo.app.timer(0.05)
async def done():
    seen = topo.counters["readings_evaluated"]
    if seen >= n and not Path(out).exists():
        with open(out, "w") as f:
            json.dump({"seconds": time.perf_counter() - state["first"], "readings": seen}, f)
worker = faust.Worker(topo.app, loglevel="warn", quiet=True)
worker.execute_from_commandline()
"""


def _readings(n: int, sensors: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    station = rng.integers(0, sensors, n)
    ts = T0 + np.sort(rng.integers(0, 6 * 3_600_000, n))
    # Gauges mostly well below their warning level (3.0 m): alerts are rare, as in life.
    value = 1.0 + 0.25 * rng.standard_normal(n) + (rng.random(n) < 0.001) * 2.5
    return station, ts, value


def _registry(dirpath: Path, sensors: int) -> tuple[Path, Path]:
    lines = ["id,kind,name,metrics,warning_level,guaranteed_level,historical_max_level"]
    lines += [f"S{i:06d},river_gauge,Gauge {i},water_level:m,3.0,4.0,5.0" for i in range(sensors)]
    stations = dirpath / "stations.csv"
    stations.write_text("\n".join(lines) + "\n")
    rules = dirpath / "rules.yaml"
    rules.write_text(
        "version: 1\nrules:\n  - id: bench.level\n    select: {kind: river_gauge}\n"
        "    metric: water_level\n    unit: m\n    window: {size: 15m, aggregate: max}\n"
        "    levels:\n      yellow: {above: station.warning_level}\n"
        "      orange: {above: station.guaranteed_level}\n"
        "      red: {above: station.historical_max_level}\n    deadband: 0.05\n"
    )
    return stations, rules


def _run(script: str, args: list[str], out: Path, timeout: float) -> dict[str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    try:
        while not out.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                raise RuntimeError(f"worker did not finish: {err}")
            time.sleep(0.1)
        time.sleep(0.1)
        return dict(json.loads(out.read_text()))
    finally:
        proc.kill()
        proc.wait()


def _json_reading(station: int, ts: int, value: float) -> bytes:
    return json.dumps({"station": f"S{station:06d}", "ts": ts, "value": value}).encode()


def textbook(n: int, sensors: int) -> float:
    station, ts, value = _readings(n, sensors)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        log = DurableLog(data)
        log.create_topic("readings", 1)
        rows = zip(station.tolist(), ts.tolist(), value.tolist(), strict=True)
        records = [Append("readings", 0, None, _json_reading(s, t, v), t) for s, t, v in rows]
        for start in range(0, n, 50_000):
            log.append(records[start : start + 50_000])
        log.close()
        result = _run(TEXTBOOK, [str(data), str(n), f"{tmp}/out.json"], Path(tmp) / "out.json",
                      timeout=1800)  # fmt: skip
    return n / result["seconds"]


def vigil(n: int, sensors: int, batch: int) -> float:
    station, ts, value = _readings(n, sensors)
    with tempfile.TemporaryDirectory() as tmp:
        stations, rules = _registry(Path(tmp), sensors)
        data = Path(tmp) / "data"
        log = DurableLog(data)
        log.create_topic("vigil-bench-telemetry", 1)
        names = tuple(f"S{i:06d}" for i in range(sensors))
        records = []
        for start in range(0, n, batch):
            sl = slice(start, start + batch)
            b = TelemetryBatch(
                stations=names,
                metrics=("water_level",),
                station_idx=station[sl].astype(np.uint32),
                metric_idx=np.zeros(len(ts[sl]), np.uint16),
                ts=ts[sl].astype(np.int64),
                value=value[sl].astype(np.float64),
                quality=np.zeros(len(ts[sl]), np.uint8),
            )
            records.append(Append("vigil-bench-telemetry", 0, None, b.encode(), int(ts[sl][0])))
        log.append(records)
        log.close()
        out = Path(tmp) / "out.json"
        result = _run(VIGIL, [str(data), str(n), str(out), str(rules), str(stations)], out,
                      timeout=600)  # fmt: skip
    return n / result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--sensors", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--textbook-readings", type=int, default=50_000,
                        help="readings for the textbook pipeline (it is slow)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    v = [vigil(args.readings, args.sensors, args.batch) for _ in range(args.repeat)]
    t = [textbook(args.textbook_readings, args.sensors) for _ in range(args.repeat)]
    vm, tm = statistics.median(v), statistics.median(t)
    print(f"sensors {args.sensors}, batch {args.batch}, runs {args.repeat}")
    print(f"vigil topology:  median {vm:,.0f} readings/s  runs {[round(x) for x in v]}")
    print(f"textbook faust:  median {tm:,.0f} readings/s  runs {[round(x) for x in t]}")
    print(f"ratio: {vm / tm:,.0f}x")


if __name__ == "__main__":
    main()

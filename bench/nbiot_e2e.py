"""NB-IoT end to end into the durable log: CoAP confirmable uplinks/s and CTWing push
requests/s through a running gateway, each against a baseline measured in the same
run; registry lookups/s at a million devices; the gateway's memory while devices churn.

    NUMBA_CACHE_DIR=$PWD/.cache/numba .venv/bin/python bench/nbiot_e2e.py \\
        [--devices 1000000] [--uplinks 6000] [--rounds 3] [--inflight 256] \\
        [--cache 5000] [--churn-s 300] [--json bench/results/nbiot-e2e.json]

1. A registry store of ``--devices`` waterlogging sensors (written straight into the
   store in ``vigil registry import``'s records; the import itself is measured by
   ``bench/bench_registry.py``) on the demo gauges, and ``vigil run`` on it with
   ``nbiot:`` (CoAP and the push receiver, default batching, a lookup cache of
   ``--cache`` devices) beside mosquitto (``vigil run`` always runs MQTT ingest).
2. Rounds, interleaved: ``--uplinks`` CoAP confirmable POSTs from distinct devices drawn
   across the fleet (one 8-byte record each, ``--inflight`` outstanding, aiocoap's
   client), first to the baseline, a bare aiocoap server in its own process that
   answers 2.04 at once and only counts, then to the gateway, which answers only once
   the readings are in the telemetry log; then the same number of CTWing ``dataReport``
   pushes (aiohttp's client) to a bare aiohttp handler that answers 200, then to the
   gateway. Each round's devices are new to the gateway's cache: every uplink is a
   registry miss. Every gateway answer must be 2.04 / 200; at the end the telemetry
   log must hold every reading sent.
3. The gateway's RSS (``/proc/PID/status``) after start and after each round, and with
   ``--churn-s``, every 30 s of CoAP uplinks from random devices across the fleet: the
   lookup cache is bounded, so it levels off however many devices have been seen
   (aiocoap keeps each confirmable request's response for EXCHANGE_LIFETIME, 247 s,
   to answer a retransmission: that part grows with the rate, for four minutes).
4. ``DeviceRegistry.lookup`` at ``--devices``: misses (random registered devices),
   hits, unknown identities; in the same process the floor (``dict.get``), the raw
   RocksDB read, and what an uplink's decode costs (the product profile's
   ``decode_binary``), against which a lookup should be small.

Rates are medians over the rounds; ``ratio`` is the gateway's median over the
baseline's. The client runs in this process, on the same cores as the servers. The
fleet and its lookups are in ``bench/nbiot_devices.py``, the baselines in
``bench/nbiot_bare.py``, the uplink load in ``bench/nbiot_load.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import cpu_s, report, rss_mib, start_gateway, write_settings
from bench.nbiot_bare import free_udp_port, start_bare
from bench.nbiot_devices import WATERLOG, fill_store, imei, lookups
from bench.nbiot_load import churn, coap_round, push_round
from connectors.mqtt.mosquitto import Mosquitto, free_port
from simulators.nbiot_fleet import ctwing_body, encode

ROOT = Path(__file__).resolve().parents[1]


def percentiles(seconds: list[float]) -> dict[str, float]:
    q = statistics.quantiles(seconds, n=100)
    return {"p50": q[49] * 1000, "p90": q[89] * 1000, "p99": q[98] * 1000}


# ---- the gateway ---------------------------------------------------------------------


def gateway_up(
    workdir: Path, mqtt_port: int, coap: int, push: int, cache: int, profile: Path | None
) -> subprocess.Popen[str]:
    """``vigil run`` in this checkout on the demo gauges and the flood pack, with NB-IoT
    ingest (CoAP on ``coap``, the push receiver on ``push``, a lookup cache of ``cache``
    devices); returns once MQTT and NB-IoT ingest both announce they are ready."""
    config = write_settings(
        workdir, ROOT / "rules/packs/demo_stations.yaml", [ROOT / "rules/packs/flood.yaml"],
        mqtt_port, nbiot={"coap_port": coap, "push_port": push, "registry_cache": cache},
    )  # fmt: skip
    engine = start_gateway(config, workdir, ROOT, profile)
    ready = threading.Event()

    def watch() -> None:
        assert engine.stdout is not None
        seen: set[str] = set()
        for line in engine.stdout:
            seen.update(w for w in ("ingest subscribed", "nbiot ingest listening") if w in line)
            if len(seen) == 2:
                ready.set()

    threading.Thread(target=watch, daemon=True).start()
    if not ready.wait(600):
        engine.kill()
        raise SystemExit((workdir / "engine.log").read_text()[-3000:])
    return engine


def logged_readings(data: Path) -> int:
    from engine.contracts.batch import TelemetryBatch
    from engine.runtime.transport.log import DurableLog

    log = DurableLog(data)
    try:
        name = "vigil-bench-telemetry"
        total = 0
        for p in range(log.partitions(name) or 0):
            for rec in log.read(name, p, 0, 10**12):
                assert rec.value is not None
                total += len(list(TelemetryBatch.decode(rec.value).rows()))
        return total
    finally:
        log.close()


# ---- main ----------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--uplinks", type=int, default=6000, help="per round and path")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inflight", type=int, default=256)
    ap.add_argument("--cache", type=int, default=5000, help="the gateway's registry_cache")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--churn-s",
        type=float,
        default=0,
        help="then CoAP uplinks of random devices this long, the RSS every 30 s",
    )
    ap.add_argument("--profile", type=Path, help="run the gateway under cProfile, stats here")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="vigil-nbiot-e2e-"))
    store = workdir / "data" / "registry"
    fill_s = fill_store(store, args.devices)
    print(f"store: {args.devices:,} devices in {fill_s:.1f} s", file=sys.stderr)
    rng = random.Random(15)
    draw = iter(rng.sample(range(args.devices), 2 * args.rounds * args.uplinks))
    ts_s = int(time.time()) - 86_400
    sent = 0
    rates: dict[str, list[float]] = {k: [] for k in ("coap_bare", "coap", "push_bare", "push")}
    rss: list[float] = []
    #: The gateway's CPU time per uplink during its rounds (µs).
    cpu_us: dict[str, list[float]] = {"coap": [], "push": []}
    latency: dict[str, list[float]] = {"coap_bare": [], "coap": []}
    load = [os.getloadavg()[0]]
    coap_bare, http_bare = free_udp_port(), free_port()
    bare = [start_bare("coap", coap_bare), start_bare("http", http_bare)]
    with Mosquitto() as broker:
        coap, push = free_udp_port(), free_port()
        engine = gateway_up(workdir, broker.port, coap, push, args.cache, args.profile)
        try:
            rss.append(rss_mib(engine.pid))
            for r in range(args.rounds):
                uplinks = []
                for _ in range(args.uplinks):
                    ts_s += 1
                    body = encode(WATERLOG, [(ts_s, {"water_depth": 0.2, "battery_v": 3.6})])
                    uplinks.append((imei(next(draw)), body))
                bodies = []
                for k in range(args.uplinks):
                    ts_s += 1
                    i = next(draw)
                    body = encode(WATERLOG, [(ts_s, {"water_depth": 0.2, "battery_v": 3.6})])
                    bodies.append(ctwing_body(imei(i), f"d{i}", ts_s * 1000, body, k))
                n, m = len(uplinks), args.inflight
                took = asyncio.run(coap_round(coap_bare, uplinks, m, latency["coap_bare"]))
                rates["coap_bare"].append(n / took)
                before = cpu_s(engine.pid)
                took = asyncio.run(coap_round(coap, uplinks, m, latency["coap"]))
                rates["coap"].append(n / took)
                cpu_us["coap"].append((cpu_s(engine.pid) - before) / n * 1e6)
                rates["push_bare"].append(n / asyncio.run(push_round(http_bare, bodies, m)))
                before = cpu_s(engine.pid)
                rates["push"].append(n / asyncio.run(push_round(push, bodies, m)))
                cpu_us["push"].append((cpu_s(engine.pid) - before) / n * 1e6)
                sent += 2 * n
                rss.append(rss_mib(engine.pid))
                load.append(os.getloadavg()[0])
                now = ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items())
                print(f"round {r + 1}: {now}, gateway RSS {rss[-1]:.0f} MiB, "
                      f"load {load[-1]:.1f}", file=sys.stderr)  # fmt: skip
            churned = 0
            rss_churn: list[tuple[float, float]] = []
            if args.churn_s:
                churned, rss_churn = asyncio.run(
                    churn(coap, 15, args.devices, args.churn_s, args.inflight, engine.pid)
                )
                sent += churned
        finally:
            engine.terminate()
            engine.wait(300)
            for p in bare:
                p.kill()
                p.wait()
    readings = logged_readings(workdir / "data")
    assert readings == 2 * sent, f"{readings} readings in the log, {2 * sent} sent"
    med = {k: statistics.median(v) for k, v in rates.items()}
    result: dict[str, Any] = {
        "devices": args.devices, "uplinks_per_round": args.uplinks, "rounds": args.rounds,
        "inflight": args.inflight, "gateway_registry_cache": args.cache,
        "coap_uplinks_per_s": med["coap"], "coap_bare_per_s": med["coap_bare"],
        "coap_ratio": med["coap"] / med["coap_bare"],
        "push_per_s": med["push"], "push_bare_per_s": med["push_bare"],
        "push_ratio": med["push"] / med["push_bare"],
        "rounds_per_s": rates, "readings_in_log": readings,
        "coap_latency_ms": {k: percentiles(v) for k, v in latency.items()},
        "gateway_cpu_us_per_uplink": {k: statistics.median(v) for k, v in cpu_us.items()},
        "gateway_rss_mib": rss, "loadavg_1m": load, "cpus": os.cpu_count(),
        "store_fill_s": fill_s,
        "churn_uplinks": churned, "churn_rss_mib": rss_churn,
    }  # fmt: skip
    result["lookup"] = lookups(store, args.devices)
    shutil.rmtree(workdir, ignore_errors=True)  # the store and the log: hundreds of MB
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

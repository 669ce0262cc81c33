"""NB-IoT end to end into the durable log: CoAP confirmable uplinks/s and CTWing push
requests/s through a running gateway, each against a baseline measured in the same
run; registry lookups/s at a million devices; the gateway's memory while devices churn.

    NUMBA_CACHE_DIR=$PWD/.cache/numba .venv/bin/python bench/nbiot_e2e.py \\
        [--devices 1000000] [--uplinks 6000] [--rounds 3] [--conns 64] [--inflight 4] \\
        [--base /tmp/main-copy] [--cache 5000] [--churn-s 300] [--json bench/results/x.json]

1. A registry store of ``--devices`` waterlogging sensors (written straight into the
   store in ``vigil registry import``'s records; the import itself is measured by
   ``bench/bench_registry.py``) on the demo gauges (which list the sensors' metrics),
   and ``vigil run`` on it with ``nbiot:`` (CoAP and the push receiver, default
   batching, a lookup cache of ``--cache`` devices) beside mosquitto (``vigil run``
   always runs MQTT ingest). With ``--base``, a second gateway runs the code of that
   checkout (a copy of main: ``git archive main | tar -x -C DIR``) on a copy of the
   store, so that a change is measured against it in the same run.
2. Rounds, interleaved: ``--uplinks`` CoAP confirmable POSTs from distinct devices drawn
   across the fleet (one 8-byte record each), first to the baseline, a bare aiocoap
   server (``udp6``) in its own process that answers 2.04 at once and only counts, then
   to each gateway, which answers only once the readings are in the telemetry log;
   then the same number of CTWing ``dataReport`` pushes to a bare aiohttp handler that
   answers 200, then to each gateway. The client is ``bench/nbiotload`` (Go, built
   here with ``go build``): ``--conns`` UDP endpoints with ``--inflight`` requests
   outstanding each, and ``--conns`` HTTP connections; without Go, the Python clients
   of ``bench/nbiot_load.py`` (one request per endpoint, and slower than the servers).
   Each round's devices are new to each gateway's cache: every uplink is a registry
   miss. Every gateway answer must be 2.04 / 200; at the end each telemetry log must
   hold every reading sent to it. Each gateway's CPU time (user + system, its whole
   process, from ``/proc``) over its rounds, per uplink, is the figure that does not
   depend on how many cores the client and the other users leave it.
3. The gateway's RSS (``/proc/PID/status``) after start and after each round, and with
   ``--churn-s``, every 30 s of CoAP uplinks from random devices across the fleet: the
   lookup cache is bounded, so it levels off however many devices have been seen
   (aiocoap keeps each confirmable request's response for EXCHANGE_LIFETIME, 247 s,
   to answer a retransmission: that part grows with the rate, for four minutes).
4. ``DeviceRegistry.lookup`` at ``--devices``: misses (random registered devices),
   hits, unknown identities; in the same process the floor (``dict.get``), the raw
   RocksDB read, and what an uplink's decode costs (the product profile's
   ``decode_binary``), against which a lookup should be small.

Rates are medians over the rounds; ``ratios`` are the gateway's median over the
bare server's and over the ``--base`` gateway's. The client runs on the same cores as
the servers. The fleet and its lookups are in ``bench/nbiot_devices.py``, the
baselines in ``bench/nbiot_bare.py``, the uplink load in ``bench/nbiot_load.py``.
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import cpu_s, report, rss_mib, start_gateway, write_settings
from bench.nbiot_bare import free_udp_port, start_bare
from bench.nbiot_devices import WATERLOG, fill_store, imei, lookups
from bench.nbiot_load import churn, coap_round, go_client, go_round, push_round
from connectors.mqtt.mosquitto import Mosquitto, free_port
from simulators.nbiot_fleet import ctwing_body, encode

ROOT = Path(__file__).resolve().parents[1]


def percentiles(seconds: list[float]) -> dict[str, float]:
    q = statistics.quantiles(seconds, n=100)
    return {"p50": q[49] * 1000, "p90": q[89] * 1000, "p99": q[98] * 1000}


# ---- the gateway ---------------------------------------------------------------------


def gateway_up(
    tree: Path,
    workdir: Path,
    mqtt_port: int,
    coap: int,
    push: int,
    cache: int,
    profile: Path | None,
    linger_ms: int | None = None,
) -> subprocess.Popen[str]:
    """``vigil run`` of checkout ``tree`` on the demo gauges and the flood pack, with
    NB-IoT ingest (CoAP on ``coap``, the push receiver on ``push``, a lookup cache of
    ``cache`` devices), its data in ``workdir``; returns once MQTT and NB-IoT ingest
    both announce they are ready."""
    # The demo gauges, which also report the waterlogging sensors' metrics (the
    # gateway admits only the metrics a station lists).
    stations = yaml.safe_load((ROOT / "rules/packs/demo_stations.yaml").read_text())
    for station in stations["stations"]:
        station["metrics"].update({m: WATERLOG.units[m] for m in ("water_depth", "battery_v")})
    (workdir / "stations.yaml").write_text(yaml.safe_dump(stations, allow_unicode=True))
    config = write_settings(
        workdir, workdir / "stations.yaml", [ROOT / "rules/packs/flood.yaml"],
        mqtt_port, mqtt={"client_id": f"vigil-bench-{workdir.name}"},
        nbiot={"coap_port": coap, "push_port": push, "registry_cache": cache},
        **({} if linger_ms is None else {"batch": {"linger_ms": linger_ms}}),
    )  # fmt: skip
    engine = start_gateway(config, workdir, tree, profile)
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
    ap.add_argument("--conns", type=int, default=64, help="client UDP endpoints / TCP conns")
    ap.add_argument(
        "--inflight", type=int, default=4, help="CoAP requests outstanding per endpoint (Go)"
    )
    ap.add_argument("--cache", type=int, default=5000, help="the gateway's registry_cache")
    ap.add_argument(
        "--linger-ms", type=int, help="the gateways' batch.linger_ms (default: theirs, 50)"
    )
    ap.add_argument(
        "--base", type=Path, help="another checkout (a copy of main): its gateway too, interleaved"
    )
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
    #: The gateways: this checkout's ("gw") and, with --base, the other's ("base"),
    #: each in its own folder (data, registry store) and with its own ports.
    trees = {"gw": (ROOT, workdir)}
    if args.base is not None:
        basedir = workdir / "base"
        shutil.copytree(store, basedir / "data" / "registry")
        trees["base"] = (args.base.resolve(), basedir)
    go = go_client(workdir)
    print(f"client: {'Go ' + str(go) if go else 'Python (no Go)'}", file=sys.stderr)
    rng = random.Random(15)
    draw = iter(rng.sample(range(args.devices), 2 * len(trees) * args.rounds * args.uplinks))
    ts_s = int(time.time()) - 86_400
    sent = dict.fromkeys(trees, 0)
    servers = ("bare", *trees)
    rates: dict[str, list[float]] = {
        f"{path}_{s}": [] for path in ("coap", "push") for s in servers
    }
    rss: dict[str, list[float]] = {g: [] for g in trees}
    #: The gateways' CPU time per uplink during their rounds (µs).
    cpu_us: dict[str, list[float]] = {f"{path}_{g}": [] for path in ("coap", "push") for g in trees}
    latency: dict[str, list[dict[str, float]]] = {f"coap_{s}": [] for s in servers}
    load = [os.getloadavg()[0]]
    coap_bare, http_bare = free_udp_port(), free_port()
    bare = [start_bare("coap", coap_bare), start_bare("http", http_bare)]
    ports = {"bare": (coap_bare, http_bare)}
    engines: dict[str, subprocess.Popen[str]] = {}

    def uplinks_of_round() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        nonlocal ts_s
        coap_reqs, pushes = [], []
        for k in range(args.uplinks):
            ts_s += 1
            body = encode(WATERLOG, [(ts_s, {"water_depth": 0.2, "battery_v": 3.6})])
            coap_reqs.append((f"/nb/{imei(next(draw))}", body))
            ts_s += 1
            i = next(draw)
            body = encode(WATERLOG, [(ts_s, {"water_depth": 0.2, "battery_v": 3.6})])
            pushes.append(("/ctwing", ctwing_body(imei(i), f"d{i}", ts_s * 1000, body, k)))
        return coap_reqs, pushes

    def one_round(server: str, path: str, reqs: list[tuple[str, bytes]]) -> None:
        coap_port, http_port = ports[server]
        engine = engines.get(server)
        before = cpu_s(engine.pid) if engine else 0.0
        n = len(reqs)
        if path == "coap":
            lat: dict[str, float] = {}
            if go:
                took = go_round(go, "coap", coap_port, reqs, args.conns, args.inflight, lat)
            else:
                seconds: list[float] = []
                ids = [(p.rsplit("/", 1)[1], b) for p, b in reqs]
                took = asyncio.run(coap_round(coap_port, ids, args.conns, seconds))
                lat = percentiles(seconds)
            latency[f"coap_{server}"].append(lat)
        elif go:
            took = go_round(go, "http", http_port, reqs, args.conns, 1)
        else:
            took = asyncio.run(push_round(http_port, [b for _, b in reqs], args.conns))
        rates[f"{path}_{server}"].append(n / took)
        if engine:
            cpu_us[f"{path}_{server}"].append((cpu_s(engine.pid) - before) / n * 1e6)
            sent[server] += n

    with Mosquitto() as broker:
        try:
            for g, (tree, wd) in trees.items():
                ports[g] = (free_udp_port(), free_port())
                engines[g] = gateway_up(
                    tree,
                    wd,
                    broker.port,
                    *ports[g],
                    args.cache,
                    args.profile if g == "gw" else None,
                    args.linger_ms,
                )
                rss[g].append(rss_mib(engines[g].pid))
            for r in range(args.rounds):
                # Each gateway its own devices (every uplink a registry miss); the
                # bare servers get the first gateway's.
                load_of = {g: uplinks_of_round() for g in trees}
                for k, path in enumerate(("coap", "push")):
                    one_round("bare", path, load_of["gw"][k])
                    for g in trees:
                        one_round(g, path, load_of[g][k])
                for g in trees:
                    rss[g].append(rss_mib(engines[g].pid))
                load.append(os.getloadavg()[0])
                now = ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items())
                print(f"round {r + 1}: {now}, load {load[-1]:.1f}", file=sys.stderr)
            churned = 0
            rss_churn: list[tuple[float, float]] = []
            if args.churn_s:
                churned, rss_churn = asyncio.run(
                    churn(ports["gw"][0], 15, args.devices, args.churn_s, args.conns,
                          engines["gw"].pid)
                )  # fmt: skip
                sent["gw"] += churned
        finally:
            for engine in engines.values():
                engine.terminate()
                engine.wait(300)
            for p in bare:
                p.kill()
                p.wait()
    readings = {g: logged_readings(wd / "data") for g, (_, wd) in trees.items()}
    for g, n in readings.items():
        assert n == 2 * sent[g], f"{g}: {n} readings in the log, {2 * sent[g]} sent"
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = {
        f"{path}_{g}_over_{b}": med[f"{path}_{g}"] / med[f"{path}_{b}"]
        for path in ("coap", "push") for g in trees for b in servers if b != g and g != "base"
    }  # fmt: skip
    result: dict[str, Any] = {
        "devices": args.devices, "uplinks_per_round": args.uplinks, "rounds": args.rounds,
        "conns": args.conns, "inflight_per_conn": args.inflight,
        "client": "go" if go else "python", "base": str(args.base) if args.base else None,
        "gateway_registry_cache": args.cache, "linger_ms": args.linger_ms,
        "per_s_median": med, "ratios": ratios, "rounds_per_s": rates,
        "readings_in_log": readings,
        "coap_latency_ms_median_of_rounds": {
            k: {q: statistics.median(r[q] for r in v) for q in ("p50", "p90", "p99")}
            for k, v in latency.items()
        },
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

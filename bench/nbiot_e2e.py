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
baseline's. The client runs in this process, on the same cores as the servers.
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
from rocksdict import WriteBatch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import report
from connectors.mqtt.mosquitto import Mosquitto, free_port
from connectors.nbiot.products import load_products
from rules.store import DeviceRegistry, make_imei
from rules.store.db import DEVICE, device_record, fast_writes, open_reader, open_writer, write_meta
from simulators.nbiot_fleet import ctwing_body, encode

ROOT = Path(__file__).resolve().parents[1]
STATIONS = ("HZ001", "HZ002", "HZ003")
WATERLOG = load_products().get("waterlog-v1")


def imei(i: int) -> str:
    return make_imei(86100000 + i // 1_000_000, i % 1_000_000)


def fill_store(store: Path, n: int) -> float:
    """``n`` devices into the store; returns the seconds it took."""
    start = time.perf_counter()
    db = open_writer(store)
    try:
        batch = WriteBatch(raw_mode=True)
        for i in range(n):
            record = device_record(STATIONS[i % 3], "waterlog-v1", None, {}, 1, i + 2)
            batch.put(DEVICE + imei(i).encode(), record)
            if i % 50_000 == 49_999:
                db.write(batch, fast_writes())
                batch = WriteBatch(raw_mode=True)
        write_meta(batch, "devices", n)
        db.write(batch, fast_writes())
        db.flush()
    finally:
        db.close()
    return time.perf_counter() - start


def rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentiles(seconds: list[float]) -> dict[str, float]:
    q = statistics.quantiles(seconds, n=100)
    return {"p50": q[49] * 1000, "p90": q[89] * 1000, "p99": q[98] * 1000}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the baselines: servers that only count -----------------------------------------


def serve_bare(kind: str, port: int) -> None:
    """A baseline server (run in its own process): answers at once, counts requests."""
    import aiocoap
    from aiocoap import resource
    from aiohttp import web

    count = 0

    class Counting(resource.Resource, resource.PathCapable):
        async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
            nonlocal count
            count += 1
            return aiocoap.Message(code=aiocoap.CHANGED)

    async def handle(request: web.Request) -> web.Response:
        nonlocal count
        await request.read()
        count += 1
        return web.Response(text="ok")

    async def main() -> None:
        if kind == "coap":
            await aiocoap.Context.create_server_context(
                Counting(), bind=("127.0.0.1", port), transports=["udp6"]
            )
        else:
            app = web.Application()
            app.router.add_post("/ctwing", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_bare(kind: str, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-bare", kind, str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- load ----------------------------------------------------------------------------


async def coap_round(
    port: int, uplinks: list[tuple[str, bytes]], inflight: int, latency: list[float]
) -> float:
    """Seconds to have every uplink answered 2.04; each answer's latency (s) is added
    to ``latency``.

    ``inflight`` clients, each its own UDP endpoint sending one confirmable request at
    a time: aiocoap (as RFC 7252's NSTART = 1 asks) holds back a second request to the
    same server until the first is answered, and so would a device; a fleet is many
    endpoints. New clients each round: fresh message ids."""
    import aiocoap

    ctxs = [await aiocoap.Context.create_client_context() for _ in range(inflight)]
    todo = iter(uplinks)
    bad: list[str] = []

    async def client(ctx: aiocoap.Context) -> None:
        for identity, body in todo:
            req = aiocoap.Message(
                code=aiocoap.POST, uri=f"coap://127.0.0.1:{port}/nb/{identity}", payload=body
            )
            sent = time.perf_counter()
            resp = await ctx.request(req).response
            latency.append(time.perf_counter() - sent)
            if resp.code != aiocoap.CHANGED:
                bad.append(f"{identity}: {resp.code} {resp.payload[:80]!r}")

    try:
        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in ctxs))
        elapsed = time.perf_counter() - start
    finally:
        for ctx in ctxs:
            await ctx.shutdown()
    assert not bad, bad[:5]
    return elapsed


async def push_round(port: int, bodies: list[bytes], inflight: int) -> float:
    """Seconds to have every push answered 200."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=inflight)
    bad: list[str] = []
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as http:
        gate = asyncio.Semaphore(inflight)

        async def one(body: bytes) -> None:
            async with gate, http.post("/ctwing", data=body) as r:
                text = await r.text()
                if r.status != 200:
                    bad.append(f"{r.status} {text[:80]}")

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        elapsed = time.perf_counter() - start
    assert not bad, bad[:5]
    return elapsed


async def churn(
    port: int, first: int, n_devices: int, seconds: float, clients: int, pid: int
) -> tuple[int, list[tuple[float, float]]]:
    """CoAP uplinks of random devices of the fleet (mostly not seen before) for
    ``seconds``, one request at a time per client; the gateway's RSS every 30 s.
    Returns (uplinks sent, [(seconds, MiB)])."""
    import aiocoap

    ctxs = [await aiocoap.Context.create_client_context() for _ in range(clients)]
    rng = random.Random(first)
    sent = 0
    ts_s = int(time.time()) - 3 * 86_400
    start = time.perf_counter()
    samples = [(0.0, rss_mib(pid))]

    async def client(ctx: aiocoap.Context) -> None:
        nonlocal sent, ts_s
        while time.perf_counter() - start < seconds:
            ts_s += 1
            body = encode(WATERLOG, [(ts_s, {"water_depth": 0.2, "battery_v": 3.6})])
            uri = f"coap://127.0.0.1:{port}/nb/{imei(rng.randrange(n_devices))}"
            resp = await ctx.request(
                aiocoap.Message(code=aiocoap.POST, uri=uri, payload=body)
            ).response
            assert resp.code == aiocoap.CHANGED, resp
            sent += 1

    async def sample() -> None:
        while time.perf_counter() - start < seconds:
            await asyncio.sleep(30)
            samples.append((time.perf_counter() - start, rss_mib(pid)))
            print(
                f"churn: {samples[-1][0]:.0f} s, {sent:,} uplinks, RSS {samples[-1][1]:.0f} MiB",
                file=sys.stderr,
            )

    try:
        await asyncio.gather(sample(), *(client(c) for c in ctxs))
    finally:
        for ctx in ctxs:
            await ctx.shutdown()
    return sent, samples


# ---- the gateway ---------------------------------------------------------------------


def start_gateway(
    workdir: Path, mqtt_port: int, coap: int, push: int, cache: int, profile: Path | None
) -> Any:
    settings = {
        "app_id": "vigil-bench", "data_dir": str(workdir / "data"), "partitions": 2,
        "stations": str(ROOT / "rules/packs/demo_stations.yaml"),
        "rules": [str(ROOT / "rules/packs/flood.yaml")],
        "alerts_jsonl": str(workdir / "alerts.jsonl"), "console": False,
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "client_id": "vigil-bench"},
        "nbiot": {"coap_port": coap, "push_port": push, "registry_cache": cache},
    }  # fmt: skip
    config = workdir / "vigil.yaml"
    config.write_text(yaml.safe_dump(settings))
    engine = subprocess.Popen(
        [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []),
         "-m", "engine.tools.cli", "run", "--config", str(config), "--loglevel", "warn"],
        stdout=subprocess.PIPE, stderr=(workdir / "engine.log").open("w"), text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=ROOT,
    )  # fmt: skip
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


# ---- registry lookups ----------------------------------------------------------------


def per_call_us(fn: Any, items: list[Any]) -> float:
    start = time.perf_counter()
    for x in items:
        fn(x)
    return (time.perf_counter() - start) / len(items) * 1e6


def lookups(store: Path, n_devices: int, n: int = 50_000) -> dict[str, float]:
    n = min(n, n_devices)
    rng = random.Random(2)
    ids = [imei(i) for i in rng.sample(range(n_devices), n)]
    unknown = [make_imei(86900000, i) for i in range(n)]
    out: dict[str, float] = {}
    before = rss_mib()
    with DeviceRegistry(store, cache_size=10_000) as reg:
        out["miss_us"] = per_call_us(reg.lookup, ids)
        hot = ids[:5_000]
        per_call_us(reg.lookup, hot)
        out["hit_us"] = per_call_us(reg.lookup, hot * 10)
        out["unknown_us"] = per_call_us(reg.lookup, unknown)
        out["reader_rss_mib_added"] = rss_mib() - before
    raw = open_reader(store)
    try:
        keys = [DEVICE + i.encode() for i in rng.sample(ids, len(ids))]
        out["rocksdb_get_us"] = per_call_us(raw.get, keys)
    finally:
        raw.close()
    table = dict.fromkeys(ids, 1)
    out["dict_get_us"] = per_call_us(table.get, ids)
    payload = encode(WATERLOG, [(1_719_763_200, {"water_depth": 0.42, "battery_v": 3.6})])
    out["decode_us"] = per_call_us(lambda p: list(WATERLOG.decode_binary(p)), [payload] * n)
    for k in ("miss", "hit", "unknown"):
        out[f"{k}_per_s"] = 1e6 / out[f"{k}_us"]
    return out


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
    ap.add_argument("--serve-bare", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare[0], int(args.serve_bare[1]))
        return 0

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
        engine = start_gateway(workdir, broker.port, coap, push, args.cache, args.profile)
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
            churned, rss_churn = 0, []
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

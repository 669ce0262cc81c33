"""The uplink load of ``bench/nbiot_e2e.py``: rounds of CoAP confirmable uplinks and of
CTWing pushes, each timed until every one is answered, and the devices' churn while the
gateway's memory is sampled.

The rounds go through ``bench/nbiotload`` (Go: go-coap and net/http, built with ``go
build`` by ``go_client``) when Go is installed: the Python clients below
(``coap_round``, ``push_round``) are the fallback, and they, not the servers, limit
the rate (about 600 requests/s to a bare aiocoap server on two cores, where the Go
client reaches about 2,700).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import rss_mib
from bench.nbiot_devices import WATERLOG, imei
from simulators.nbiot_fleet import encode

__all__ = ["churn", "coap_round", "go_client", "go_round", "push_round"]

GO_CLIENT = Path(__file__).resolve().parent / "nbiotload"


def go_client(out_dir: Path) -> Path | None:
    """``bench/nbiotload`` built into ``out_dir``; None when Go is not installed."""
    go = shutil.which("go")
    if go is None:
        return None
    binary = out_dir / "nbiotload"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_CLIENT, check=True)
    return binary


def go_round(
    binary: Path,
    mode: str,
    port: int,
    requests: list[tuple[str, bytes]],
    conns: int,
    inflight: int,
    latency: dict[str, float] | None = None,
) -> float:
    """Seconds to have every request ``(path, body)`` answered (2.04 for ``mode``
    ``coap``, 200 for ``http``) by the Go client: ``conns`` UDP endpoints or TCP
    connections, ``inflight`` requests outstanding on each (CoAP; HTTP/1.1 has one).
    ``latency``: filled with its p50/p90/p99 (ms)."""
    lines = "".join(f"{path} {body.hex()}\n" for path, body in requests)
    done = subprocess.run(
        [str(binary), "-mode", mode, "-addr", f"127.0.0.1:{port}", "-conns", str(conns),
         "-inflight", str(inflight)],
        input=lines, capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    result = json.loads(done.stdout)
    assert result["bad"] == 0, result["first_bad"]
    if latency is not None:
        latency.update(result["latency_ms"])
    return float(result["seconds"])


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

"""Notification latency: MQTT publish of the reading that crosses a line -> the webhook
receiver's receipt, through a real gateway (``vigil run``), at half its maximum ingest.

Everything is real and local: mosquitto on a free port, the gateway as a child process
with its default batching, a routing file whose route sends each station's first alert
at once (``group_by: [station]``, ``group_wait: 0s``) to a signed webhook, and an HTTP
server in this process that stamps each POST on arrival.

1. Maximum ingest: ``--max-readings`` background readings (below every line, 1,000
   gauges) published at QoS 1 as fast as one paho client goes, then one crossing
   reading; the rate is the readings over the time from the first publish to that
   crossing's notification (the gateway is behind the publisher if anything, so this
   is what it ingested and evaluated end to end).
2. Latency: background readings paced at half that rate for ``--seconds``, and every
   ``--probe-ms`` one probe gauge's crossing reading; latency = webhook receipt -
   publish time of the crossing (both this machine's wall clock).

    NUMBA_CACHE_DIR=$PWD/.cache/numba PYTHONPATH=. .venv/bin/python bench/dispatch_latency.py

Run once; the figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from connectors.mqtt.mosquitto import Mosquitto, free_port
from simulators.publisher import Publisher
from tests.integration.conftest import EngineProcess
from tests.integration.test_dispatch_gateway import RULES

BACKGROUND = 1000


class Stamps:
    """An HTTP server that records (arrival wall time, body) of every POST."""

    def __init__(self) -> None:
        self.got: list[tuple[float, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.got.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arrival(self, station: str, timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, body in list(self.got):
                if any(a["station"] == station for a in body["alerts"]):
                    return at
            time.sleep(0.005)
        raise AssertionError(f"no notification for {station}")


def _registry(tmp: Path, probes: int) -> Path:
    def gauge(sid: str, basin: str) -> dict[str, Any]:
        return {
            "id": sid, "kind": "river_gauge", "name": sid, "basin": basin, "district": "d",
            "report_interval": "5m", "metrics": {"water_level": "m"},
            "warning_level": 3.0, "guaranteed_level": 5.0, "historical_max_level": 9.0,
        }  # fmt: skip

    stations = [gauge(f"B{i:04d}", f"b{i % 10}") for i in range(BACKGROUND)]
    stations += [gauge(f"P{i:04d}", "probes") for i in range(probes + 1)]
    path = tmp / "stations.yaml"
    path.write_text(yaml.safe_dump({"stations": stations}))
    return path


def _gateway(tmp: Path, broker: Mosquitto, hook: str, probes: int) -> EngineProcess:
    rules = tmp / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES, allow_unicode=True))
    routing = tmp / "routing.yaml"
    routing.write_text(yaml.safe_dump({
        "version": 1,
        "receivers": [{"name": "hook", "type": "webhook", "url": hook + "/hook",
                       "secret_env": "VIGIL_BENCH_SECRET"}],
        "route": {"receivers": ["hook"], "group_by": ["station"], "group_wait": "0s",
                  "group_interval": "5m"},
    }))  # fmt: skip
    settings = {
        "app_id": "vigil-bench",
        "data_dir": str(tmp / "data"),
        "partitions": 2,
        "stations": str(_registry(tmp, probes)),
        "rules": [str(rules)],
        "alerts_jsonl": str(tmp / "alerts.jsonl"),
        "console": False,
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "client_id": "vigil-bench-gw"},
        "web_port": free_port(),
        "dispatch": {"routes": str(routing)},
    }
    path = tmp / "vigil.yaml"
    path.write_text(yaml.safe_dump(settings))
    return EngineProcess(path, tmp / "engine.log")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-readings", type=int, default=30_000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--probe-ms", type=float, default=100.0)
    ap.add_argument(
        "--rate", type=float, default=None,
        help="readings/s of the latency run (default: half the measured maximum); fixed, "
        "to compare two versions at the same load",
    )  # fmt: skip
    args = ap.parse_args()
    probes = int(args.seconds * 1000 / args.probe_ms)
    os.environ["VIGIL_BENCH_SECRET"] = "bench"
    with tempfile.TemporaryDirectory() as t, Mosquitto() as broker:
        tmp = Path(t)
        stamps = Stamps()
        engine = _gateway(tmp, broker, stamps.url, probes)
        engine.start()
        publisher = Publisher(broker.host, broker.port, client_id="vigil-bench-pub")
        try:
            now = int(time.time() * 1000)
            warm = [(f"B{i:04d}", "water_level", now, 1.0) for i in range(BACKGROUND)]
            publisher.publish(warm)  # every gauge known before the clock starts
            time.sleep(3.0)

            # 1. Maximum ingest.
            n = args.max_readings
            base = int(time.time() * 1000)
            flood = [(f"B{i % BACKGROUND:04d}", "water_level", base + i // BACKGROUND, 1.0)
                     for i in range(n)]  # fmt: skip
            start = time.time()
            publisher.publish(flood)
            published = time.time()
            last = f"P{probes:04d}"
            publisher.publish([(last, "water_level", int(time.time() * 1000), 4.0)])
            done = stamps.arrival(last)
            max_rate = (n + 1) / (done - start)
            print(f"max ingest: {n + 1} readings in {done - start:.2f} s = {max_rate:,.0f}/s "
                  f"(publishing took {published - start:.2f} s)")  # fmt: skip

            # 2. Latency at half that rate.
            rate = args.rate or max_rate / 2
            total = int(rate * args.seconds)
            probe_every = max(1, int(total / probes))
            sent: dict[str, float] = {}
            interval = 1.0 / rate
            t0 = time.monotonic()
            k = 0
            for i in range(total):
                delay = t0 + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                ts = int(time.time() * 1000)
                if i % probe_every == 0 and k < probes:
                    station = f"P{k:04d}"
                    sent[station] = time.time()
                    publisher.client.publish(
                        f"vigil/{station}/water_level",
                        json.dumps({"value": 4.0, "ts": ts}).encode(), qos=1,
                    )  # fmt: skip
                    k += 1
                else:
                    publisher.client.publish(
                        f"vigil/B{i % BACKGROUND:04d}/water_level",
                        json.dumps({"value": 1.0, "ts": ts}).encode(), qos=1,
                    )  # fmt: skip
            achieved = total / (time.monotonic() - t0)
            latencies = sorted((stamps.arrival(s) - at) * 1000 for s, at in sent.items())
            q = statistics.quantiles(latencies, n=100, method="inclusive")
            print(f"latency at {achieved:,.0f} readings/s (target {rate:,.0f}), "
                  f"{len(latencies)} crossings: p50 {q[49]:.0f} ms, p99 {q[98]:.0f} ms, "
                  f"max {latencies[-1]:.0f} ms")  # fmt: skip
        finally:
            publisher.close()
            engine.kill()


if __name__ == "__main__":
    main()

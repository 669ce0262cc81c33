"""End to end through MQTT: the gateway's cost per message against a raw paho-mqtt
subscriber that only counts, on the same broker and backlog, measured in the same run.

Each run starts a fresh mosquitto (the project's configuration,
``connectors/mqtt/vigil-mosquitto.conf``) and, in turn (alternating which goes first),
a raw subscriber (this file with ``--raw``: paho-mqtt, persistent session, counts and
acknowledges in paho's thread, nothing else) and ``vigil run`` (embedded log, one level
rule over every station, ``/metrics`` on a loopback port). Each consumer subscribes, is
stopped with SIGSTOP, and a backlog is published to the broker while it is stopped by
``--stations`` ``mosquitto_pub -l`` processes (C, one per station topic); then SIGCONT,
and the consumer drains the backlog. So the publisher is never the limit and never in
what is measured, and the consumer's start-up is not counted.

Measured per consumer: wall seconds from SIGCONT until the last message is counted (the
raw subscriber's last message; the gateway's ``vigil_readings_evaluated_total`` reaching
the total, polled every 100 ms, so every reading was appended durably to the telemetry
log, acknowledged and evaluated by the kernels), and the CPU seconds (user + system) of
the consumer's process tree over the same span (the scrapes included: about 3 %). At
QoS 0 the broker may drop (a consumer then stops at what it got once nothing arrives
for 3 s; the idle wait is not in the wall time).

    NUMBA_CACHE_DIR=$PWD/.cache/numba .venv/bin/python bench/mqtt_e2e.py \\
        [--messages 100000] [--per-message 1] [--qos 1] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import gauge, start_gateway, write_config
from connectors.mqtt.mosquitto import Mosquitto, free_port

IDLE_S = 3.0  # no new message for this long: the consumer got all it will get
KEEPALIVE_S = 600  # the stopped consumer must not be disconnected during the backlog


def _tree(pid: int) -> dict[int, float]:
    """``pid`` and its descendants, each with its user + system CPU seconds (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        stats[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, todo = {}, [pid]
    while todo:
        p = todo.pop()
        tree[p] = stats.get(p, 0.0)
        todo += children.get(p, [])
    return tree


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants."""
    return sum(_tree(pid).values())


def _signal_tree(pid: int, sig: int) -> None:
    """``sig`` to ``pid`` and its descendants (the gateway's ingest workers)."""
    for p in _tree(pid):
        with contextlib.suppress(ProcessLookupError):  # one that exited meanwhile
            os.kill(p, sig)


def _payloads(station: int, messages: int, per_message: int, t0: int) -> bytes:
    """``messages`` lines of JSON, each ``per_message`` readings 1 ms apart."""
    lines = []
    k = 0
    for _ in range(messages):
        items = []
        for _ in range(per_message):
            items.append(f'{{"value": {1.0 + (k % 97) / 100:.2f}, "ts": {t0 + k}}}')
            k += 1
        lines.append(items[0] if per_message == 1 else "[" + ", ".join(items) + "]")
    return ("\n".join(lines) + "\n").encode()


def _publish(port: int, qos: int, backlog: list[bytes]) -> None:
    procs = []
    for i, data in enumerate(backlog):
        proc = subprocess.Popen(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", str(qos), "-l",
             "-t", f"vigil/B{i:03d}/water_level", "-i", f"bench-pub-{i}"],
            stdin=subprocess.PIPE,
        )  # fmt: skip
        procs.append((proc, data))
    for proc, data in procs:
        assert proc.stdin is not None
        proc.stdin.write(data)
        proc.stdin.close()
    for proc, _ in procs:
        assert proc.wait(600) == 0, "mosquitto_pub failed"


def _raw_subscriber(port: int, qos: int, expected: int) -> int:
    """``--raw``: subscribe (persistent session), print ``subscribed``, then count; print
    the monotonic time of the last message and the count, once all came or none for
    IDLE_S."""
    import paho.mqtt.client as mqtt

    count = 0
    last = 0.0
    done = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):  # type: ignore[no-untyped-def]
        client.subscribe("vigil/+/+", qos=qos)

    def on_subscribe(client, userdata, mid, reason_codes, properties):  # type: ignore[no-untyped-def]
        print("subscribed", flush=True)

    def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
        nonlocal count, last
        count += 1
        last = time.monotonic()
        if count >= expected:
            done.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw", clean_session=False
    )
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect("127.0.0.1", port, KEEPALIVE_S)
    client.loop_start()
    while not done.wait(0.5):
        if count and time.monotonic() - last > IDLE_S:
            break
    print(f"done {last} {count}", flush=True)
    client.disconnect()
    client.loop_stop()
    return 0


def _evaluated(web_port: int) -> float:
    # A generous timeout: the event loop that answers is busy with whole batches.
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=120) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("vigil_readings_evaluated_total "):
                return float(line.split()[1])
    return 0.0


def _wait_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    box: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if needle in line:
                box.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert box, f"no {needle!r} within {timeout} s"
    return box[0]


def _run_raw(port: int, qos: int, backlog: list[bytes], messages: int) -> dict[str, float]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--raw", "--port", str(port), "--qos", str(qos),
         "--expected", str(messages)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_line(proc, "subscribed", 60)
        os.kill(proc.pid, signal.SIGSTOP)
        _publish(port, qos, backlog)
        cpu0 = _cpu_s(proc.pid)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGCONT)
        _, last, count = _wait_line(proc, "done", 600).split()
        cpu = _cpu_s(proc.pid) - cpu0
        return {"messages": int(count), "wall_s": float(last) - t0, "cpu_s": cpu}
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(30)


def _run_vigil(
    workdir: Path,
    port: int,
    qos: int,
    backlog: list[bytes],
    messages: int,
    readings: int,
    tree: Path,
    profile: Path | None = None,
    processes: int = 1,
) -> dict[str, float]:
    web_port = free_port()
    config = write_config(
        workdir, [gauge(f"B{i:03d}") for i in range(len(backlog))], "bench.mqtt_level", port,
        mqtt={"keepalive": KEEPALIVE_S, **({"processes": processes} if processes > 1 else {})},
        lateness_ms=3_600_000, web_port=web_port,
    )  # fmt: skip
    proc = start_gateway(config, workdir, tree)
    spy: subprocess.Popen[bytes] | None = None
    try:
        _wait_line(proc, "ingest subscribed", 300)
        _evaluated(web_port)  # the web server is up
        if profile is not None:  # py-spy's own CPU is not in the tree measured
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(proc.pid),
                 "--threads", "--subprocesses", "--format", "speedscope", "--rate", "200",
                 "--output", str(profile)],
                stdout=subprocess.DEVNULL, stderr=(workdir / "py-spy.log").open("w"),
            )  # fmt: skip
            time.sleep(1.0)
        _signal_tree(proc.pid, signal.SIGSTOP)
        _publish(port, qos, backlog)
        cpu0 = _cpu_s(proc.pid)
        t0 = time.monotonic()
        _signal_tree(proc.pid, signal.SIGCONT)
        n, t_last, cpu_last = 0.0, t0, 0.0
        while n < readings:
            time.sleep(0.1)
            now_n = _evaluated(web_port)
            if now_n != n:
                n, t_last, cpu_last = now_n, time.monotonic(), _cpu_s(proc.pid)
            elif (
                n
                and time.monotonic() - t_last > IDLE_S
                # idle, not busy with a large batch (its loop answers late, if at all)
                and _cpu_s(proc.pid) - cpu_last < 0.1 * IDLE_S
            ):
                break
        return {
            "messages": round(n / (readings / messages)),
            "readings": n,
            "wall_s": t_last - t0,
            "cpu_s": cpu_last - cpu0,
        }
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        _signal_tree(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--per-message", type=int, default=1)
    ap.add_argument("--qos", type=int, choices=(0, 1), default=1)
    ap.add_argument("--stations", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", help="one consumer: raw, vigil, base or vigil-pN")
    ap.add_argument(
        "--processes",
        default="1",
        help="comma-separated mqtt.processes to measure this tree at (1: 'vigil'; N: 'vigil-pN')",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        help="another Vigil checkout, measured as 'base' in the same runs",
    )
    ap.add_argument("--profile", type=Path, help="py-spy profiles of the gateway runs, here")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--expected", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw:
        return _raw_subscriber(args.port, args.qos, args.expected)
    per_station = args.messages // args.stations
    messages = per_station * args.stations
    readings = messages * args.per_message
    t0 = int(time.time() * 1000) - 86_400_000
    backlog = [_payloads(i, per_station, args.per_message, t0) for i in range(args.stations)]
    here = Path(__file__).resolve().parents[1]
    trees: dict[str, tuple[Path, int]] = {
        ("vigil" if n == 1 else f"vigil-p{n}"): (here, n)
        for n in (int(x) for x in args.processes.split(","))
    }
    if args.baseline:
        trees["base"] = (args.baseline.resolve(), 1)
    results: dict[str, list[dict[str, float]]] = {"raw": [], **{k: [] for k in trees}}
    who_all = list(results)
    for run in range(args.runs):
        order = who_all[run % len(who_all) :] + who_all[: run % len(who_all)]
        for who in order:
            if args.only and who != args.only:
                continue
            workdir = Path(tempfile.mkdtemp(prefix="vigil-mqtt-e2e-"))
            with Mosquitto() as broker:
                if who == "raw":
                    r = _run_raw(broker.port, args.qos, backlog, messages)
                else:
                    profile = None
                    if args.profile is not None:
                        args.profile.mkdir(parents=True, exist_ok=True)
                        profile = args.profile / f"{who}-{run}.speedscope.json"
                    r = _run_vigil(
                        workdir, broker.port, args.qos, backlog, messages, readings,
                        trees[who][0], profile, trees[who][1],
                    )  # fmt: skip
            r["msgs_per_s"] = r["messages"] / r["wall_s"]
            r["readings_per_s"] = r["messages"] * args.per_message / r["wall_s"]
            r["cpu_s_per_100k_msgs"] = r["cpu_s"] / r["messages"] * 100_000
            results[who].append(r)
            print(who, json.dumps({k: round(v, 3) for k, v in r.items()}), flush=True)
    summary: dict[str, object] = {
        "messages": messages, "per_message": args.per_message, "qos": args.qos,
        "stations": args.stations, "runs": args.runs, "loadavg": os.getloadavg(),
        "cpus": os.cpu_count(),
    }  # fmt: skip
    for who, rs in results.items():
        if rs:
            summary[who] = {
                k: statistics.median(r[k] for r in rs)
                for k in ("messages", "msgs_per_s", "readings_per_s", "cpu_s_per_100k_msgs")
            }
    raw = summary.get("raw")
    for who in trees:
        ours = summary.get(who)
        if isinstance(raw, dict) and isinstance(ours, dict):
            ratio = ours["cpu_s_per_100k_msgs"] / raw["cpu_s_per_100k_msgs"]
            summary[f"cpu_ratio_{who}_to_raw"] = ratio
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

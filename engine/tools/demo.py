"""``vigil demo``: a river flood end to end on the embedded runtime, in about a minute.

It starts a real mosquitto on a free loopback port, a duty room of its own (a webhook
receiver and an SMTP server, ``demo_desk.py``), the gateway (``vigil run``) as a child
process on a temporary data directory with a routing file for the demo, and a simulator
that publishes three river gauges through a flood (rise through the warning level, past
the guaranteed level at one gauge and the historical maximum at another, then recession)
at QoS 1. Beside them, over TCP to the gateway's field servers, a reservoir RTU reports
its level in SL 651 timed reports as the flood fills it, and an air-quality station sends
HJ 212 real-time and hourly data through a pollution episode; each waits for the
protocol's reply. Two days of readings are compressed into the run. Alerts are shown as
they land in the gateway's JSON-lines file, and the dispatcher's notifications as they
reach the duty room: grouped per basin, routed by level (blue to a log file, yellow and up
to the duty room's webhook, orange and up also by mail, an unacknowledged red escalates to
the section head after a few demo seconds). The first orange alert is acknowledged from
the CLI (``vigil alerts ack``); the red one is left to escalate and the section head takes
it through the signed link in the escalation message; then the all-clears arrive. A few
malformed messages and frames (a bad CRC, a wrong password) show the dead-letter path. At
the end everything is stopped and a
summary printed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

import rules
from connectors.mqtt.mosquitto import Mosquitto, free_port
from connectors.sinks.console import format_event
from engine.contracts.alerts import AlertEvent, Level
from engine.runtime.transport.log import DurableLog
from engine.tools.demo_desk import Desk
from engine.tools.demo_duty import DutyRoom, duty_summary
from simulators.field_episode import EpisodeAirStation, FloodedReservoirRtu
from simulators.publisher import Publisher
from simulators.river import FloodWave, flood_readings
from simulators.tcp_station import Fault, run_station

__all__ = ["run_demo"]

PACKS = Path(rules.__file__).resolve().parent / "packs"
START_MS = 1_719_763_200_000  # 2024-06-30 16:00 UTC = 07-01 00:00 Beijing time
START_LOCAL = datetime(2024, 7, 1, 0, 0)  # the same instant on the field stations' clocks
HOURS = 48.0
STEP_MIN = 5.0

WAVES = (
    # Upstream gauge: past the guaranteed level (orange).
    FloodWave("HZ001", base=2.8, peak=6.1, time_to_peak_h=12.0),
    # Middle gauge: past its historical maximum (red).
    FloodWave("HZ002", base=1.9, peak=5.0, time_to_peak_h=15.0),
    # Tributary: just over the warning level (yellow).
    FloodWave("HZ003", base=1.5, peak=2.85, time_to_peak_h=18.0),
)

BAD_MESSAGES = (
    ("vigil/HZ001/water_level", b'{"value": "high"}'),
    ("vigil/HZ002/water_level", b"\x7e\x7e\x01garbage"),
    ("vigil/XX999/water_level", b'{"value": 1.0, "ts": 1719763200000}'),
)

HOOK_SECRET_ENV = "VIGIL_DEMO_HOOK_SECRET"
LINK_SECRET_ENV = "VIGIL_DEMO_LINK_SECRET"

#: The field stations (SL 651 reservoir, HJ 212 air station) and their dead-letter cases.
FIELD_STATIONS = ("SK01", "AQ01")


def _registry(workdir: Path) -> Path:
    """The river gauges and the field stations in one registry file."""
    stations = []
    for name in ("demo_stations.yaml", "demo_field_stations.yaml"):
        stations += yaml.safe_load((PACKS / name).read_text(encoding="utf-8"))["stations"]
    path = workdir / "stations.yaml"
    path.write_text(yaml.safe_dump({"stations": stations}, allow_unicode=True), encoding="utf-8")
    return path


def _routing(desk: Desk, escalate_s: int) -> dict[str, Any]:
    """The demo's routing file: by level, per basin, timings scaled to the demo."""

    def hook(name: str) -> dict[str, Any]:
        return {"name": name, "type": "webhook", "url": f"{desk.url}/{name}",
                "secret_env": HOOK_SECRET_ENV, "retry": {"attempts": 1}}  # fmt: skip

    return {
        "version": 1,
        "receivers": [
            {"name": "duty-log", "type": "jsonl", "path": "duty-log.jsonl"},
            hook("duty-room"),
            hook("section-head"),
            {
                "name": "duty-mail",
                "type": "email",
                "host": "127.0.0.1",
                "port": desk.smtp_port,
                "security": "none",
                "from": "vigil@demo.invalid",
                "to": ["duty@demo.invalid"],
            },
        ],
        "levels": {"blue": {"receivers": ["duty-log"]}},  # blue: the log only
        "route": {
            "receivers": ["duty-room"],
            "group_by": ["basin"],
            "group_wait": "1s",
            "group_interval": "2s",
            "routes": [
                {
                    "name": "red",
                    "matchers": ["level>=red"],
                    "receivers": ["duty-mail"],
                    "escalation": [
                        {
                            "after": f"{escalate_s}s",
                            "receivers": ["section-head"],
                            "name": "section head",
                        },
                    ],
                },
                {
                    "name": "orange",
                    "matchers": ["level>=orange"],
                    "receivers": ["duty-room", "duty-mail"],
                },
            ],
        },
    }


def _write_settings(workdir: Path, port: int, web_port: int, routing: dict[str, Any]) -> Path:
    routes = workdir / "routing.yaml"
    routes.write_text(yaml.safe_dump(routing, sort_keys=False))
    settings = {
        "app_id": "vigil-demo",
        "data_dir": str(workdir / "data"),
        "partitions": 2,
        "stations": str(_registry(workdir)),
        "rules": [str(PACKS / "flood.yaml"), str(PACKS / "demo_field.yaml")],
        "sl651": {"host": "127.0.0.1", "port": 0},
        "hj212": {"host": "127.0.0.1", "port": 0},
        "alerts_jsonl": str(workdir / "alerts.jsonl"),
        "console": False,
        "mqtt": {"host": "127.0.0.1", "port": port, "client_id": "vigil-demo-gateway"},
        "batch": {"max_readings": 2000, "linger_ms": 50},
        "web_port": web_port,
        "dispatch": {"routes": str(routes), "link_secret_env": LINK_SECRET_ENV,
                     "tick_s": 0.5, "retry_initial_s": 0.2, "retry_max_s": 2.0},
    }  # fmt: skip
    path = workdir / "vigil.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


class _AlertTail:
    """Prints alert events as they are appended to the dispatcher's JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[AlertEvent] = []
        self._offset = 0

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as f:
            f.seek(self._offset)
            while line := f.readline():
                if not line.endswith("\n"):
                    break  # the writer is mid-line; read it next time
                self._offset = f.tell()
                event = AlertEvent.from_json(line)
                self.events.append(event)
                print("  " + format_event(event, sys.stdout.isatty()), flush=True)


class _Stdout:
    """The engine's stdout lines, read on a thread; ``wait`` for one that has a needle."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait(self, needle: str, timeout: float) -> str | None:
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((ln for ln in self.lines if needle in ln), None), timeout
            )
        return found or None


def _field_stations(ports: tuple[int, int], duration_s: float) -> tuple[int, int]:
    """Run the reservoir RTU and the air station for ``duration_s``; also one frame with
    a bad CRC and one with a wrong password. Returns the replies each good station got."""
    rtu, air = FloodedReservoirRtu(START_LOCAL), EpisodeAirStation(START_LOCAL)
    n_rtu, n_air = int(HOURS * 60 / STEP_MIN) + 1, int(HOURS) + 1
    replies = [0, 0]

    def counter(i: int, marker: bytes) -> Callable[[bytes], None]:
        def count(chunk: bytes) -> None:
            replies[i] += chunk.count(marker)

        return count

    async def run() -> None:
        bad_rtu = FloodedReservoirRtu(START_LOCAL, faults=frozenset({Fault.BAD_CRC}))
        bad_air = EpisodeAirStation(START_LOCAL, faults=frozenset({Fault.WRONG_PASSWORD}))
        await asyncio.gather(
            run_station("127.0.0.1", ports[0], rtu.report, START_LOCAL,
                        timedelta(minutes=STEP_MIN), n_rtu, duration_s / n_rtu,
                        on_reply=counter(0, b"\x7e\x7e")),
            run_station("127.0.0.1", ports[1], air.report, START_LOCAL, timedelta(hours=1),
                        n_air, duration_s / n_air, on_reply=counter(1, b"##")),
            run_station("127.0.0.1", ports[0], bad_rtu.report, START_LOCAL + timedelta(hours=9),
                        timedelta(minutes=5), 1, 0),
            run_station("127.0.0.1", ports[1], bad_air.report, START_LOCAL + timedelta(hours=9),
                        timedelta(hours=1), 1, 0),
        )  # fmt: skip

    asyncio.run(run())
    return replies[0], replies[1]


def _summary(
    events: list[AlertEvent], published: int, replies: tuple[int, int], dead: list[tuple[str, str]]
) -> None:
    print("\nSummary")
    print(
        f"  MQTT readings published: {published}   SL 651 reports acknowledged: {replies[0]}   "
        f"HJ 212 packets answered: {replies[1]}"
    )
    print(f"  alert events: {len(events)}   dead-lettered messages: {len(dead)}")
    by_station: dict[str, list[AlertEvent]] = {}
    for e in events:
        by_station.setdefault(e.station, []).append(e)
    for station in (*(w.station for w in WAVES), *FIELD_STATIONS):
        evs = by_station.get(station, [])
        peak = max((Level.parse(e.level) for e in evs), default=Level.NONE)
        clear = [e for e in evs if e.state == "resolved"]
        cleared = "all clear" if clear and evs[-1].state == "resolved" else "still firing"
        print(f"  {station}: highest level {peak.label:<6} {len(evs)} transitions, {cleared}")
    for reason, source in dead:
        print(f"  dead-letter: {source}: {reason}")


def _dead_letters(data_dir: Path, topic: str) -> list[tuple[str, str]]:
    log = DurableLog(data_dir)
    try:
        records = [
            r for p in range(log.partitions(topic) or 0) for r in log.read(topic, p, 0, 1000)
        ]
        return [
            (dict(r.headers)["vigil-reason"].decode(), dict(r.headers)["vigil-source"].decode())
            for r in records
        ]
    finally:
        log.close()


def run_demo(duration_s: float = 60.0, keep: bool = False) -> int:
    """Run the demo; returns the process exit code: 0 when the flood was seen through,
    its alerts told, one acknowledged, one escalated and taken, and the all-clears told."""
    for noisy in ("mail.log", "httpx"):  # the duty room's servers and clients: quiet
        logging.getLogger(noisy).setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="vigil-demo-"))
    readings = list(flood_readings(WAVES, START_MS, HOURS, STEP_MIN))
    publish_s = max(5.0, duration_s - 15.0)
    escalate_s = max(2, round(publish_s * 0.07))  # ~3 s: a red lasts ~5 s of a 45-s flood
    print(
        f"Vigil demo: {len(WAVES)} river gauges over MQTT, a reservoir RTU over SL 651 and an "
        f"air station over HJ 212; {HOURS:.0f} h of readings replayed in {publish_s:.0f} s\n"
    )
    engine: subprocess.Popen[str] | None = None
    env = {**os.environ, "PYTHONUNBUFFERED": "1", HOOK_SECRET_ENV: secrets.token_hex(16),
           LINK_SECRET_ENV: secrets.token_hex(16)}  # fmt: skip
    try:
        with Mosquitto() as broker, Desk(env[HOOK_SECRET_ENV]) as desk:
            print(f"  mosquitto on 127.0.0.1:{broker.port}")
            print(f"  duty room: webhooks at {desk.url}, mail at 127.0.0.1:{desk.smtp_port}")
            print(
                "  routing: per basin; blue -> duty-log file; yellow+ -> duty-room webhook; "
                f"orange+ -> also duty-mail; red unacknowledged {escalate_s}s -> section-head\n"
                "  (a message goes to each group an alert joined: per route, per basin)"
            )
            web_port = free_port()
            url = f"http://127.0.0.1:{web_port}"
            config = _write_settings(workdir, broker.port, web_port, _routing(desk, escalate_s))
            engine = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "engine.tools.cli",
                    "run",
                    "--config",
                    str(config),
                    "--loglevel",
                    "warn",
                ],
                stdout=subprocess.PIPE,
                stderr=(workdir / "engine.log").open("w"),
                text=True,
                env=env,
            )
            stdout = _Stdout(engine)
            announced = [stdout.wait(needle, timeout=120) for needle in
                         ("ingest subscribed", "sl651 listening", "hj212 listening")]  # fmt: skip
            if not all(announced):
                print("the engine did not start; see", workdir / "engine.log", file=sys.stderr)
                return 1
            ports = tuple(int(str(line).rsplit(":", 1)[1]) for line in announced[1:])
            print(f"  engine running on local://{workdir / 'data'} (pid {engine.pid}), {url}")
            print(f"  the duty room's page: {url}/console (open it in a browser while it runs)")
            print(
                f"  SL 651 server on 127.0.0.1:{ports[0]}, HJ 212 server on 127.0.0.1:{ports[1]}\n"
            )
            field_replies = (0, 0)

            def field() -> None:
                nonlocal field_replies
                field_replies = _field_stations((ports[0], ports[1]), publish_s)

            field_thread = threading.Thread(target=field, daemon=True)
            field_thread.start()
            tail = _AlertTail(workdir / "alerts.jsonl")
            duty = DutyRoom(desk, url)
            publisher = Publisher(broker.host, broker.port)
            thread = threading.Thread(
                target=publisher.publish, args=(readings, publish_s, len(readings)), daemon=True
            )
            thread.start()
            bad_at = time.monotonic() + publish_s * 0.3
            bad_sent = False
            while thread.is_alive() or field_thread.is_alive():
                tail.poll()
                duty.poll()
                if not bad_sent and time.monotonic() >= bad_at:
                    for topic, payload in BAD_MESSAGES:
                        publisher.publish_raw(topic, payload)
                    bad_sent = True
                time.sleep(0.2)
            # Let the last batches through the topology and the last notifications reach
            # the duty room (quiet for 4 s, at most 60 s), then stop the engine cleanly.
            quiet_until, give_up = time.monotonic() + 4.0, time.monotonic() + 60.0
            seen = (len(tail.events), len(duty.received))
            while time.monotonic() < min(quiet_until, give_up):
                tail.poll()
                duty.poll()
                now = (len(tail.events), len(duty.received))
                if now != seen:
                    seen, quiet_until = now, time.monotonic() + 4.0
                time.sleep(0.2)
            publisher.close()
            engine.send_signal(signal.SIGTERM)
            engine.wait(timeout=60)
            tail.poll()
            duty.poll()
        dead = _dead_letters(workdir / "data", "vigil-demo-dead-letter")
        _summary(tail.events, len(readings), field_replies, dead)
        duty_summary(duty, workdir / "duty-log.jsonl")
        print(f"\n  alerts file: {workdir / 'alerts.jsonl'}" if keep else "")
        alerted = {e.station for e in tail.events}
        ok = (
            alerted >= set(FIELD_STATIONS)
            and bool(tail.events)
            and engine.returncode == 0
            and bool(duty.acked and duty.taken and duty.all_clears)
            and all(a.signed for a in duty.received)
        )
        return 0 if ok else 1
    finally:
        if engine is not None and engine.poll() is None:
            engine.kill()
            engine.wait()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)

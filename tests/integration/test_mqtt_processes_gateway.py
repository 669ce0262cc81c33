"""A gateway (``vigil run``) with two MQTT ingest processes (``mqtt.processes: 2``) fed
realistic traffic through real mosquitto: every published reading is in the telemetry
log exactly once, and the alerts are those ``vigil replay`` raises for the same readings;
a worker killed with SIGKILL mid-stream, or stopped with SIGSTOP (found hung, then
killed), is started again, the gateway runs on, and what the worker had not
acknowledged comes back from the broker (no reading missing).

The traffic is ``tests.traffic``'s (twelve gauges, backlogs, duplicates, disorder,
bursts), every message at QoS 1 (QoS 0 is at most once: not what is tested here),
published as ``test_live_equals_replay`` does. Two workers take a station's messages in
turns, so the log holds a station's readings out of arrival order by up to a batch
period: the lateness here (30 min of event time) covers the traffic's own disorder
(8 min) and that, at this speed (2000x: a second of wall time is 33 min).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from connectors.mqtt.mosquitto import Mosquitto
from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch
from engine.runtime.transport.log import DurableLog
from rules.api import load_ruleset
from rules.registry import load_registry
from tests.differential.compare import compare, cutoff, timed_compounds
from tests.integration.conftest import EngineProcess, write_settings
from tests.integration.test_live_equals_replay import APP_ID, REPO, Devices, _stable
from tests.traffic import HOUR_MS, REGISTRY, RULES, STEP_MS, Traffic, TrafficSpec, generate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LATENESS_MS = 30 * 60_000
SPEEDUP = 2_000
HOURS = 12.0
TAIL_H = 3.0


def _traffic() -> Traffic:
    span = int((HOURS + TAIL_H) * HOUR_MS)
    start = (int(time.time() * 1000) - span - HOUR_MS // 2) // STEP_MS * STEP_MS
    traffic = generate(TrafficSpec(seed=20240630, hours=HOURS, tail_h=TAIL_H), start)
    messages = tuple(replace(m, qos=1) for m in traffic.messages)
    return replace(traffic, messages=messages)


def _log(data: Path) -> tuple[bool, Counter[tuple[str, str, int]], Counter[str]]:
    """Whether every record of the consumed topics is committed, every reading in the
    telemetry log with how many times it is there, and the dead letters' reasons."""
    log = DurableLog(data)
    try:
        done, rows, dead = True, Counter[tuple[str, str, int]](), Counter[str]()
        name = f"{APP_ID}-telemetry"
        for p in range(log.partitions(name) or 0):
            for rec in log.read(name, p, 0, 10**9):
                batch = TelemetryBatch.decode(rec.value or b"")
                rows.update((s, m, t) for s, m, t, _, _ in batch.rows())
        for topic in ("telemetry", "alerts", "corroboration"):
            name = f"{APP_ID}-{topic}"
            for p in range(log.partitions(name) or 0):
                done &= (log.committed(APP_ID, name, p) or 0) == log.highwater(name, p)
        name = f"{APP_ID}-dead-letter"
        for p in range(log.partitions(name) or 0):
            dead.update(
                dict(r.headers)["vigil-reason"].decode() for r in log.read(name, p, 0, 10**9)
            )
        return done, rows, dead
    finally:
        log.close()


def _worker_pids(gateway: int) -> list[int]:
    """The gateway's ingest worker processes (its children running the worker module)."""
    children = Path(f"/proc/{gateway}/task/{gateway}/children").read_text().split()
    return [
        int(pid)
        for pid in children
        if b"connectors.mqtt.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def _wait_for(engine_log: Path, text: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in engine_log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in the log:\n{engine_log.read_text()[-3000:]}")


def _settings(mosquitto: Mosquitto, tmp_path: Path, processes: int = 2) -> Path:
    return write_settings(
        tmp_path,
        mosquitto.port,
        stations=str(REGISTRY),
        rules=[str(RULES)],
        partitions=4,
        lateness_ms=LATENESS_MS,
        batch={"max_readings": 200, "linger_ms": 20},
        mqtt={
            "host": "127.0.0.1",
            "port": mosquitto.port,
            "client_id": "gw",
            "processes": processes,
        },
    )


def _gateway(mosquitto: Mosquitto, tmp_path: Path, processes: int = 2) -> EngineProcess:
    """A gateway (not started) with ``processes`` ingest processes, its log in
    ``engine.log``."""
    return EngineProcess(_settings(mosquitto, tmp_path, processes), tmp_path / "engine.log")


def _has_session(broker: Mosquitto, client_id: str) -> bool:
    """Whether the broker has a persistent session for ``client_id`` (this connection
    makes one if not: ask once, at the end)."""
    present: list[bool] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_connect = lambda client, userdata, flags, rc, props: present.append(
        bool(flags.session_present)
    )
    c.connect(broker.host, broker.port)
    c.loop_start()
    deadline = time.monotonic() + 30
    while not present and time.monotonic() < deadline:
        time.sleep(0.05)
    c.disconnect()
    c.loop_stop()
    assert present, f"no CONNACK for {client_id}"
    return present[0]


@contextlib.contextmanager
def _devices(mosquitto: Mosquitto) -> Iterator[Devices]:
    """``Devices`` publishing at this module's ``SPEEDUP``."""
    devices = Devices(mosquitto)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("tests.integration.test_live_equals_replay.SPEEDUP", SPEEDUP)
            yield devices
    finally:
        devices.close()


def _finish(
    engine: EngineProcess, traffic: Traffic, tmp_path: Path
) -> tuple[Counter[tuple[str, str, int]], Counter[str], list[AlertEvent]]:
    """Once every message is published to the running ``engine``: stop it (SIGTERM) and
    start it again until every reading is logged and every record committed; the
    readings logged, the dead letters and the alerts delivered."""
    alerts, engine_log = tmp_path / "alerts.jsonl", engine.log
    for _ in range(10):
        _stable(alerts)
        assert engine.proc is not None and engine.proc.poll() is None, "the gateway died"
        assert engine.terminate() == 0, engine_log.read_text()[-3000:]
        finished, rows, dead = _log(tmp_path / "data")
        if finished and set(rows) >= {(s, m, t) for s, m, t, _ in traffic.readings()}:
            break
        engine.start()
    else:
        pytest.fail("the gateway did not log and commit everything after 10 rounds")
    live = [AlertEvent.from_json(x) for x in alerts.read_text().splitlines() if x]
    return rows, dead, live


def _run(
    mosquitto: Mosquitto,
    tmp_path: Path,
    kill_at: float | None,
    sig: signal.Signals = signal.SIGKILL,
) -> tuple[Traffic, Counter[tuple[str, str, int]], Counter[str], list[AlertEvent], str]:
    """Publishes the traffic to a gateway with two ingest processes (``sig`` to one
    after ``kill_at`` of the messages: SIGKILL, or SIGSTOP, which leaves it hung); the
    readings logged, the dead letters, the alerts and the engine's log once everything
    is committed."""
    traffic = _traffic()
    engine = _gateway(mosquitto, tmp_path)
    engine_log = engine.log
    messages = list(traffic.messages)
    cut = len(messages) if kill_at is None else int(len(messages) * kill_at)
    try:
        engine.start()
        with _devices(mosquitto) as devices:
            devices.publish(messages[:cut])
            if kill_at is not None:
                assert engine.proc is not None
                workers = _worker_pids(engine.proc.pid)
                assert len(workers) == 2, workers
                os.kill(workers[0], sig)
                if sig == signal.SIGSTOP:  # the gateway has to find it hung, and kill it
                    _wait_for(engine_log, f"(pid {workers[0]}) is hung")
                # The rest once it is back: the other worker would otherwise take
                # readings hours of event time (seconds here) ahead of those the dead
                # one had not acknowledged, and the kernels would find those late.
                _wait_for(engine_log, "subscribed again after its restart")
                devices.publish(messages[cut:])
            rows, dead, live = _finish(engine, traffic, tmp_path)
    finally:
        engine.kill()
    return traffic, rows, dead, live, engine_log.read_text(errors="replace")


def _replayed(traffic: Traffic, tmp_path: Path) -> list[AlertEvent]:
    csv_path, replayed_path = tmp_path / "readings.csv", tmp_path / "replay.jsonl"
    traffic.write_csv(csv_path)
    subprocess.run(
        [sys.executable, "-m", "engine.tools.cli", "replay", "--rules", str(RULES),
         "--stations", str(REGISTRY), "--input", str(csv_path),
         "--alerts-out", str(replayed_path)],
        check=True, cwd=REPO, capture_output=True, timeout=300,
    )  # fmt: skip
    return [AlertEvent.from_json(x) for x in replayed_path.read_text().splitlines() if x]


def _assert_same_alerts(traffic: Traffic, live: list[AlertEvent], tmp_path: Path) -> None:
    timed = timed_compounds(load_ruleset([str(RULES)], load_registry(REGISTRY)).ruleset)
    until = cutoff(traffic.end_ms, LATENESS_MS)
    diff = compare(live, _replayed(traffic, tmp_path), until, traffic.disorder_ms, timed)
    assert diff.compared > 20  # the traffic does raise alerts: the comparison means something
    assert not diff and not diff.live_repeats, diff.report(80)


def test_two_ingest_processes_log_every_reading_once_and_raise_what_replay_raises(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    traffic, rows, dead, live, _ = _run(mosquitto, tmp_path, kill_at=None)
    published = Counter((m.station, m.metric, t) for m in traffic.messages for t, _ in m.readings)
    assert rows == published  # each published reading once (a duplicate message: twice)
    # No message rejected at ingest. The rules' own dead letters (a duplicate message is
    # "out of order", a reading shuffled past its window "late") are the traffic's.
    assert all(r.startswith(("late for rule", "out of order for rule")) for r in dead), dead
    _assert_same_alerts(traffic, live, tmp_path)


def test_a_killed_ingest_process_is_restarted_and_nothing_is_lost(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    traffic, rows, dead, live, engine_log = _run(mosquitto, tmp_path, kill_at=0.4)
    assert re.search(r"MQTT ingest worker \d exited with status -9: starting it again", engine_log)
    published = Counter((m.station, m.metric, t) for m in traffic.messages for t, _ in m.readings)
    assert set(rows) == set(published)  # none lost; redelivered ones may be there twice
    # No message rejected at ingest. The rules' own dead letters (a duplicate message is
    # "out of order", a reading shuffled past its window "late") are the traffic's.
    assert all(r.startswith(("late for rule", "out of order for rule")) for r in dead), dead
    _assert_same_alerts(traffic, live, tmp_path)


def test_a_hung_ingest_process_is_killed_restarted_and_nothing_is_lost(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """An ingest process stopped with SIGSTOP mid-stream (as a deadlock would leave it:
    alive, connected, its share of the subscription held) is found silent, killed and
    started again; the broker redelivers what it had not acknowledged."""
    traffic, rows, dead, live, engine_log = _run(mosquitto, tmp_path, 0.4, signal.SIGSTOP)
    assert re.search(r"MQTT ingest worker \d \(pid \d+\) is hung \(silent for 2.5 s\)", engine_log)
    assert re.search(r"MQTT ingest worker \d exited with status -9: starting it again", engine_log)
    published = Counter((m.station, m.metric, t) for m in traffic.messages for t, _ in m.readings)
    assert set(rows) == set(published)  # none lost; redelivered ones may be there twice
    assert all(r.startswith(("late for rule", "out of order for rule")) for r in dead), dead
    _assert_same_alerts(traffic, live, tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_the_whole_gateway_stopped_twice_mid_stream_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path, sig: signal.Signals
) -> None:
    """A pump-house power cut (SIGKILL), or a stop (SIGTERM), of the whole gateway,
    its two workers with it, twice mid-stream while the devices go on publishing at
    QoS 1, then started again: what the broker took meanwhile waited in the workers'
    persistent sessions (the same client ids, ``gw-0`` and ``gw-1``), and comes through.
    Every reading is logged (a stop: exactly once; a SIGKILL may leave a batch written
    and not acknowledged, which comes again and is counted once), and the alerts are
    those of ``vigil replay``."""
    traffic = _traffic()
    messages = list(traffic.messages)
    cuts = [0, *(int(len(messages) * f) for f in (0.3, 0.4, 0.6, 0.7)), len(messages)]
    engine = _gateway(mosquitto, tmp_path)
    try:
        engine.start()
        with _devices(mosquitto) as devices:
            for i in range(0, len(cuts) - 2, 2):
                devices.publish(messages[cuts[i] : cuts[i + 1]])
                if sig == signal.SIGKILL:
                    engine.kill()
                else:
                    assert engine.terminate() == 0, engine.log.read_text()[-3000:]
                devices.publish(messages[cuts[i + 1] : cuts[i + 2]])  # while it is down
                engine.start()
            devices.publish(messages[cuts[-2] :])
            rows, dead, live = _finish(engine, traffic, tmp_path)
    finally:
        engine.kill()
    published = Counter((m.station, m.metric, t) for m in traffic.messages for t, _ in m.readings)
    if sig == signal.SIGTERM:
        assert rows == published  # each published reading once (a duplicate message: twice)
    else:
        assert set(rows) == set(published)
    assert all(r.startswith(("late for rule", "out of order for rule")) for r in dead), dead
    _assert_same_alerts(traffic, live, tmp_path)


def test_lowered_processes_take_what_the_removed_workers_sessions_hold(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """``mqtt.processes`` lowered from 3 to 2 while the gateway is down. Meanwhile the
    broker gave ``gw-2``'s session (a member of the shared subscription, away) its third
    of what the devices published: the gateway started with 2 takes it through a
    retiring worker, merged in time order with the others' backlogs, and ends that
    session. Every reading is logged exactly once, and the alerts are those of
    ``vigil replay``. (The gateway with 3 runs only to make its sessions: with three
    workers taking live traffic in turns, a device's upload of buffered readings and its
    next live reading go to different workers, and may be appended in the other order.)
    """
    traffic = _traffic()
    messages = list(traffic.messages)
    cut = int(len(messages) * 0.4)
    engine = _gateway(mosquitto, tmp_path, processes=3)
    try:
        engine.start()
        assert engine.terminate() == 0, engine.log.read_text()[-3000:]
        with _devices(mosquitto) as devices:
            devices.publish(messages[:cut])  # a third waits in gw-2's session
            engine.config = _settings(mosquitto, tmp_path, processes=2)
            engine.start()
            devices.publish(messages[cut:])
            rows, dead, live = _finish(engine, traffic, tmp_path)
    finally:
        engine.kill()
    assert "the broker still has the session of gw-2" in engine.log.read_text()
    published = Counter((m.station, m.metric, t) for m in traffic.messages for t, _ in m.readings)
    assert rows == published  # each published reading once (a duplicate message: twice)
    assert all(r.startswith(("late for rule", "out of order for rule")) for r in dead), dead
    _assert_same_alerts(traffic, live, tmp_path)
    assert not _has_session(mosquitto, "gw-2")  # ended: no share goes there any more
    assert _has_session(mosquitto, "gw-1")

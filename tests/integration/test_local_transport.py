"""The embedded transport under a real Faust worker: agents, ``stream.take``, producers
and a table whose changelog is recovered after ``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.runtime.transport.log import Append, DurableLog

pytestmark = pytest.mark.integration

APP = Path(__file__).parent / "apps" / "counter_app.py"
KEYS = ("a", "b", "c", "d", "e")


def _start(data: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(APP), str(data)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )


def _produce(data: Path, start: int, n: int) -> None:
    """Write ``numbers`` directly into the log, as another producer would."""
    log = DurableLog(data)
    try:
        log.create_topic("numbers", 3)
        log.append(
            [
                Append("numbers", i % 3, None, f"{KEYS[i % len(KEYS)]}:{i}".encode(), 0)
                for i in range(start, start + n)
            ]
        )
    finally:
        log.close()


def _seen(data: Path) -> list[tuple[str, int]]:
    path = data / "seen.txt"
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines() if line]
    return [(value, int(count)) for value, count in rows]


def _wait_for(data: Path, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len({v for v, _ in _seen(data)}) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"saw {len(_seen(data))} events, wanted {n}")


def test_agents_take_and_table_recover_after_kill_9(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "worker.log"
    _produce(data, 0, 300)
    worker = _start(data, log)
    try:
        _wait_for(data, 300)
        time.sleep(1.0)  # let a commit pass with the table's changelog
        worker.send_signal(signal.SIGKILL)
        worker.wait()

        _produce(data, 300, 200)
        worker = _start(data, log)
        _wait_for(data, 500)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, log.read_text()[-2000:]
    finally:
        if worker.poll() is None:
            worker.kill()

    seen = _seen(data)
    assert {v for v, _ in seen} == {f"{KEYS[i % 5]}:{i}" for i in range(500)}
    # Recovery: after the restart, each key's count continues from where the changelog
    # left it, so the last count per key equals the number of distinct values for it
    # plus any values the worker processed twice (at-least-once after kill -9).
    last: dict[str, int] = {}
    per_key_events: dict[str, int] = {}
    for value, n in seen:
        key = value.split(":")[0]
        last[key] = n
        per_key_events[key] = per_key_events.get(key, 0) + 1
    assert last == per_key_events
    assert all(n >= 100 for n in last.values())

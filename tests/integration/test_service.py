"""The gateway started the way ``packaging/systemd/vigil.service`` starts it (issue 13
item 6): as an unprivileged user whose home is read-only, without NUMBA_CACHE_DIR, with a
NOTIFY_SOCKET; it compiles its kernels into the data directory, tells systemd READY=1,
evaluates readings, refuses a second gateway on its data directory in one line, and
says STOPPING=1 on SIGTERM. CI runs as root, which can become another user."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from connectors.mqtt.mosquitto import Mosquitto
from tests.integration.conftest import PACKS, mosquitto_pub

pytestmark = pytest.mark.integration

NOBODY = 65534
T0 = 1_719_763_200_000
RULE = """\
version: 1
rules:
  - id: test.level
    select: {ids: [HZ003]}
    metric: water_level
    unit: m
    window: {size: 15m, aggregate: max}
    levels:
      yellow: {above: 2.0}
"""


@pytest.fixture
def service_dir() -> Iterator[Path]:
    """A folder every user can enter (pytest's tmp_path is root's alone)."""
    assert os.geteuid() == 0, "this test starts the gateway as another user: run it as root"
    assert shutil.which("setpriv"), "setpriv (util-linux) is not installed"
    path = Path(tempfile.mkdtemp(prefix="vigil-service-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _receive(sock: socket.socket, needle: bytes, timeout: float) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.1))
        try:
            got.append(sock.recv(4096))
        except TimeoutError:
            break
        if any(line.startswith(needle) for m in got for line in m.split(b"\n")):
            return got
    raise AssertionError(f"no {needle!r} from the gateway; got {got}")


def test_runs_as_a_service_user_with_a_read_only_home(
    mosquitto: Mosquitto, service_dir: Path
) -> None:
    home = service_dir / "home"  # read-only to the service user (root's, mode 755)
    home.mkdir(mode=0o755)
    data = service_dir / "data"
    data.mkdir()
    os.chown(data, NOBODY, NOBODY)
    rules = service_dir / "rules.yaml"
    rules.write_text(RULE)
    settings = {
        "app_id": "vigil-svc",
        "data_dir": str(data),
        "partitions": 2,
        "stations": str(PACKS / "demo_stations.yaml"),
        "rules": [str(rules)],
        "console": False,
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "vigil-svc"},
        "batch": {"max_readings": 500, "linger_ms": 20},
        "lateness_ms": 0,
    }
    config = service_dir / "vigil.yaml"
    config.write_text(yaml.safe_dump(settings))
    notify_path = service_dir / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify_path.chmod(0o777)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "NOTIFY_SOCKET": str(notify_path),
        "PYTHONUNBUFFERED": "1",
    }  # no NUMBA_CACHE_DIR: the gateway must find a writable place itself
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    command = [*as_nobody, sys.executable, "-m", "engine.tools.cli", "run", "--config", str(config)]
    log = service_dir / "engine.log"
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env, cwd=service_dir
    )
    try:
        # A cold numba compile on a busy machine: minutes, not seconds.
        _receive(notify, b"READY=1", timeout=600)
        assert proc.poll() is None, log.read_text()[-3000:]
        assert any((data / "cache" / "numba").rglob("*.nbi")), "numba cached nothing"
        _receive(notify, b"STATUS=subscribed", timeout=120)  # readings before are not ours

        # It works: a reading above the rule's yellow line becomes an alert.
        reading = {"value": 2.5, "ts": T0}
        mosquitto_pub(mosquitto, "vigil/HZ003/water_level", json.dumps(reading))
        alerts = data / "alerts.jsonl"
        deadline = time.monotonic() + 120
        while not (alerts.exists() and '"test.level"' in alerts.read_text()):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)

        # A second gateway on the same data directory: one clear line, at once.
        second = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=service_dir, timeout=300
        )
        assert second.returncode == 2
        assert second.stderr.splitlines() == [
            f"vigil: data directory {data} is in use by another vigil process "
            f"(pid {proc.pid}); stop it first, or give this one another data_dir"
        ]
        proc.send_signal(signal.SIGTERM)
        _receive(notify, b"STOPPING=1", timeout=60)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def test_the_unit_file_is_valid_for_systemd(tmp_path: Path) -> None:
    """``systemd-analyze verify`` of the shipped unit, its ExecStart pointed at this
    checkout's ``vigil``."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is not installed (apt-get install systemd)"
    unit = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "vigil.service"
    vigil = Path(sys.executable).parent / "vigil"
    text = unit.read_text().replace("/opt/vigil/bin/vigil", str(vigil))
    (tmp_path / "vigil.service").write_text(text)
    done = subprocess.run(
        [analyze, "verify", str(tmp_path / "vigil.service")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "vigil.service" in line and "Documentation" not in line
    ]
    assert problems == [], done.stdout + done.stderr

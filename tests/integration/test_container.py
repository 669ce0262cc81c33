"""The image of ``packaging/Containerfile`` (issue 13 item 6), built as it is and run
the way its header says: read-only, as the image's own unprivileged user (whose home
does not exist and could not be made), the data and numba's cache on volumes, the
site's settings, rules and stations mounted read-only. The gateway in it becomes ready
on ``/readyz``, turns a reading published to the test's mosquitto into the rule's
alert, compiles its kernels into the cache volume, and stops on ``podman stop``
(SIGTERM) with status 0 before the stop timeout would kill it.

The base image is made from Debian's mirror, CI being unable to reach Docker Hub
(``tests/integration/container.py``); the first run makes it and builds every layer
(about two minutes), later runs reuse it and the unchanged layers."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from connectors.mqtt.mosquitto import Mosquitto, free_port
from tests.integration.conftest import PACKS, mosquitto_pub
from tests.integration.container import Podman

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TAG = "localhost/vigil:test"
USER = 10001  # the recipe's vigil user and group
STOP_TIMEOUT_S = 60  # the systemd unit's TimeoutStopSec
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
def site() -> Iterator[Path]:
    """A folder the container's user can enter (pytest's tmp_path is root's alone)."""
    assert os.geteuid() == 0, "this test builds and runs a container as root"
    path = Path(tempfile.mkdtemp(prefix="vigil-container-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _until(check: Callable[[], bool], what: str, timeout: float, alive: Callable[[], None]) -> None:
    """Wait for ``check``, failing at once when ``alive`` finds the container gone."""
    deadline = time.monotonic() + timeout
    while not check():
        alive()
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(1)


def test_the_image_runs_read_only_as_its_user(mosquitto: Mosquitto, site: Path) -> None:
    podman = Podman()
    podman.ensure_base()
    image = podman.build(REPO, REPO / "packaging" / "Containerfile", TAG, site / "build.log")

    etc = site / "etc"  # mounted read-only at /etc/vigil
    etc.mkdir(mode=0o755)
    (etc / "rules.yaml").write_text(RULE)
    shutil.copy(PACKS / "demo_stations.yaml", etc / "stations.yaml")
    web_port = free_port()
    settings = {  # no data_dir: the image's VIGIL_DATA_DIR gives it
        "app_id": "vigil-ctr",
        "partitions": 2,
        "stations": "/etc/vigil/stations.yaml",
        "rules": ["/etc/vigil/rules.yaml"],
        "console": False,
        "web_port": web_port,
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "vigil-ctr"},
        "batch": {"max_readings": 500, "linger_ms": 20},
        "lateness_ms": 0,
    }
    (etc / "vigil.yaml").write_text(yaml.safe_dump(settings))
    for path in etc.iterdir():
        path.chmod(0o644)
    data, cache = site / "data", site / "cache"
    for volume in (data, cache):
        volume.mkdir(mode=0o750)
        os.chown(volume, USER, USER)

    name = f"vigil-test-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "--detach", "--name", name, "--read-only", "--network", "host",
        "--stop-timeout", str(STOP_TIMEOUT_S), "--log-driver", "k8s-file", *podman.limits(),
        "--volume", f"{etc}:/etc/vigil:ro",
        "--volume", f"{data}:/var/lib/vigil",
        "--volume", f"{cache}:/var/cache/vigil",
        image,
    )  # fmt: skip
    try:

        def logs() -> str:
            done = podman("logs", name, check=False)
            return (done.stdout + done.stderr)[-4000:]

        def alive() -> None:
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running", f"the container is {state}:\n{logs()}"

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{web_port}/readyz", timeout=5).is_success
            except httpx.TransportError:
                return False

        # A cold numba compile on a busy machine: minutes, not seconds.
        _until(ready, "/readyz 200", timeout=600, alive=alive)
        top = podman("top", name, "user", "huser").stdout.splitlines()
        assert top[1].split() == ["vigil", str(USER)], top  # under the headers: the gateway

        # It works: a reading above the rule's yellow line becomes that rule's alert.
        mosquitto_pub(mosquitto, "vigil/HZ003/water_level", json.dumps({"value": 2.5, "ts": T0}))
        alerts = data / "alerts.jsonl"
        _until(alerts.exists, "an alert in alerts.jsonl", timeout=120, alive=alive)
        _until(lambda: alerts.read_text().endswith("\n"), "a whole line", 30, alive)
        [alert] = [json.loads(line) for line in alerts.read_text().splitlines()]
        expected = {
            "rule_id": "test.level",
            "station": "HZ003",
            "metric": "water_level",
            "level": "yellow",
            "state": "firing",
            "at": T0,
            "value": 2.5,
            "threshold": 2.0,
        }
        assert {key: alert[key] for key in expected} == expected

        # numba compiled into the cache volume (CACHE_DIRECTORY), not beside the data.
        assert any((cache / "numba").rglob("*.nbi")), "numba cached nothing in the cache"
        assert not (data / "cache").exists()

        # SIGTERM: exit 0 before podman would resort to SIGKILL.
        podman("stop", name, timeout=STOP_TIMEOUT_S + 60)
        state = json.loads(podman("inspect", "--format", "{{json .State}}", name).stdout)
        assert state["ExitCode"] == 0, logs()
        assert "Traceback" not in logs()
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)

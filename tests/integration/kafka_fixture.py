"""Pytest fixtures that run a real Apache Kafka 3.9 (KRaft) cluster with scripts/kafka.

`kafka_bootstrap` (session scope) starts one combined broker+controller on a free
loopback port and yields its bootstrap address ("127.0.0.1:PORT"); `kafka_cluster3`
(module scope) starts three nodes and yields a `KafkaCluster` whose `restart_broker`
is meant for failure tests. Each cluster lives in its own state dir under pytest's
tmp dir, so a developer's own `scripts/kafka up` cluster is left alone.

If Java or Maven is missing, Maven Central cannot be reached on the first run, or the
broker does not start, the fixture FAILS with the script's message: it never skips,
so a machine that cannot run Kafka cannot pass the integration suite silently.

`tests/integration/conftest.py` registers both fixtures for every module there. Do not
import them into a test module: a fixture a module imports is that module's own, and a
session-scoped one then starts a broker per module, each kept until the session ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = REPO_DIR / "scripts" / "kafka"

# The first run fetches ~46 MB of jars through Maven; later runs start in seconds.
UP_TIMEOUT_S = 600
CMD_TIMEOUT_S = 180


class KafkaScriptError(RuntimeError):
    """scripts/kafka exited non-zero; the message carries its stderr."""


@dataclass
class KafkaCluster:
    """A cluster started by scripts/kafka in its own state dir."""

    state_dir: Path
    brokers: int
    bootstrap: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def _run(self, *args: str, timeout: float = CMD_TIMEOUT_S) -> str:
        cmd = [str(KAFKA_SCRIPT), *args]
        try:
            proc = subprocess.run(
                cmd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaScriptError(
                f"`scripts/kafka {' '.join(args)}` did not finish in {timeout:.0f}s\n"
                f"stderr:\n{_text(exc.stderr)}"
            ) from exc
        if proc.returncode != 0:
            raise KafkaScriptError(
                f"`scripts/kafka {' '.join(args)}` exited with {proc.returncode}\n"
                f"stderr:\n{proc.stderr.strip()}"
            )
        return proc.stdout.strip()

    def up(self) -> str:
        args = ["up"] if self.brokers == 1 else ["up", "--brokers", str(self.brokers)]
        out = self._run(*args, timeout=UP_TIMEOUT_S)
        lines = out.splitlines()
        if not lines or not lines[-1].startswith("127.0.0.1:"):
            raise KafkaScriptError(f"`scripts/kafka up` printed no bootstrap address: {out!r}")
        self.bootstrap = lines[-1]
        return self.bootstrap

    def down(self) -> None:
        self._run("down")

    def restart_broker(self, node: int, *, kill: bool = False) -> None:
        """Stop node `node` (SIGTERM, or SIGKILL when kill=True) and start it again."""
        self._run("restart-broker", str(node), *(["--kill"] if kill else []))

    def stop_broker(self, node: int, *, kill: bool = False) -> None:
        self._run("stop-broker", str(node), *(["--kill"] if kill else []))

    def start_broker(self, node: int) -> None:
        self._run("start-broker", str(node))

    def log_path(self, node: int) -> Path:
        return self.state_dir / f"node-{node}" / "kafka.log"


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _preflight() -> None:
    if not KAFKA_SCRIPT.is_file() or not os.access(KAFKA_SCRIPT, os.X_OK):
        pytest.fail(f"{KAFKA_SCRIPT} is missing or not executable", pytrace=False)
    if shutil.which("java") is None:
        pytest.fail(
            "Kafka integration tests need Java 11+ on PATH (java not found); "
            "Debian: apt-get install openjdk-17-jre-headless",
            pytrace=False,
        )


def start_cluster(state_dir: Path, brokers: int = 1) -> KafkaCluster:
    """Start a cluster in `state_dir`, or fail the requesting test with the reason."""
    _preflight()
    env = {**os.environ, "VIGIL_KAFKA_DIR": str(state_dir)}
    cluster = KafkaCluster(state_dir=state_dir, brokers=brokers, env=env)
    try:
        cluster.up()
        return cluster
    except KafkaScriptError as exc:
        reason = str(exc)
    # Leave no half-started JVMs behind; the logs go with them, so the script's
    # stderr (which quotes the log tail) is the report.
    with contextlib.suppress(KafkaScriptError):
        cluster.down()
    pytest.fail(f"could not start a {brokers}-node Kafka cluster:\n{reason}", pytrace=False)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address ("127.0.0.1:PORT") of a single-node Kafka 3.9 for the session."""
    cluster = start_cluster(tmp_path_factory.mktemp("kafka") / "cluster", brokers=1)
    try:
        yield cluster.bootstrap
    finally:
        cluster.down()


@pytest.fixture(scope="module")
def kafka_cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A three-node Kafka 3.9 cluster (each node broker+controller) for failure tests."""
    cluster = start_cluster(tmp_path_factory.mktemp("kafka3") / "cluster", brokers=3)
    try:
        yield cluster
    finally:
        cluster.down()

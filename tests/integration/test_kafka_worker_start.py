"""The Kafka tests' worker harness against a port race: the free-port helper's port
may be taken by another process (the machine runs many suites) before the worker binds
it. A worker that exits for that, and only that, starts again on a fresh port; any
other start failure still fails the test."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from connectors.mqtt.mosquitto import free_port
from tests.integration.http_receiver import HttpReceiver
from tests.integration.kafka_load import WorkerProcess
from tests.integration.test_dispatch_kafka import Workers, hooks

__all__ = ["hooks"]


def test_a_worker_whose_web_port_was_taken_starts_on_a_fresh_one(
    kafka_bootstrap: str, tmp_path: Path, hooks: HttpReceiver
) -> None:
    ws = Workers(kafka_bootstrap, tmp_path, hooks)
    with socket.socket() as squatter:  # another suite's server, on the worker's port
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        worker = ws.start("w1", port=taken)
        try:
            worker.wait_ready()
            assert worker.lost_ports == [taken]
            assert worker.web_port != taken
            assert "address already in use" in worker.tail(10**7)
            r = httpx.get(f"http://127.0.0.1:{worker.web_port}/healthz", timeout=30)
            assert r.status_code == 200
            assert f"web_port: {worker.web_port}\n" in (tmp_path / "w1.yaml").read_text()
        finally:
            worker.terminate()


def test_any_other_start_failure_still_fails(kafka_bootstrap: str, tmp_path: Path) -> None:
    config = tmp_path / "w1.yaml"
    config.write_text(f"app_id: broken\nstations: {tmp_path / 'missing.yaml'}\n")
    worker = WorkerProcess(tmp_path, "w1", config, kafka_bootstrap, free_port())
    try:
        with pytest.raises(AssertionError, match="w1 exited while starting"):
            worker.wait_ready()
        assert worker.lost_ports == []
    finally:
        worker.kill()

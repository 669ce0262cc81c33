"""A running gateway seen the way an operator sees it: ``/metrics`` scraped and parsed by
Prometheus' own parser, ``/readyz`` and ``vigil status`` turning when the broker goes
away and back, dead letters read with ``vigil dead-letters`` while the gateway runs,
and the web port protected off loopback (token, TLS) or refused."""

from __future__ import annotations

import json
import os
import queue
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import paho.mqtt.publish as publish
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from connectors.mqtt.mosquitto import Mosquitto, free_port
from tests.integration.conftest import EngineProcess, write_settings

pytestmark = pytest.mark.integration

T0 = 1_719_763_200_000
T = TypeVar("T")


def _until(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def _pub(broker: Mosquitto, topic: str, payload: bytes) -> None:
    publish.single(topic, payload, qos=1, hostname=broker.host, port=broker.port)


def _vigil(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _listening(port: int) -> set[str]:
    """The IPv4 addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            out.add(address)
    return out


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus_client's own text parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def gateway(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[EngineProcess, str, Path]]:
    port = free_port()
    config = write_settings(tmp_path, mosquitto.port, web_port=port)
    engine = EngineProcess(config, tmp_path / "engine.log")
    engine.start()
    yield engine, f"http://127.0.0.1:{port}", config
    engine.kill()


def test_metrics_readiness_status_and_dead_letters_of_a_running_gateway(
    gateway: tuple[EngineProcess, str, Path], mosquitto: Mosquitto, tmp_path: Path
) -> None:
    engine, url, config = gateway
    web = httpx.Client(base_url=url, timeout=10)
    for minute, value in ((0, 1.0), (5, 3.5), (10, 3.5), (15, 3.5), (20, 3.5)):
        reading = {"value": value, "ts": T0 + minute * 60_000}
        _pub(mosquitto, "vigil/HZ003/water_level", json.dumps(reading).encode())
    _pub(mosquitto, "vigil/HZ003/water_level", b"not json at all")
    _pub(mosquitto, "vigil/HZ003/water_level", b"\xff\x00\x01\x1b[31m")
    _pub(mosquitto, "vigil/HZ003/water_level", b'{"value": "high"}')
    _pub(mosquitto, "vigil/HZ003/water_level", b'{"value": "\x1b[2J\xe2\x80\xae"}')
    _pub(mosquitto, "vigil/NOPE1/water_level", json.dumps({"value": 1.0, "ts": T0}).encode())

    alerts_path = tmp_path / "alerts.jsonl"

    def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        samples = _samples(web.get("/metrics").text)
        dead = sum(v for (n, _), v in samples.items() if n == "vigil_dead_letters_total")
        alerts = sum(v for (n, _), v in samples.items() if n == "vigil_alert_events_total")
        lines = alerts_path.read_text().splitlines() if alerts_path.exists() else []
        return samples if dead == 5 and lines and alerts == len(lines) else None

    samples = _until(scraped, "5 dead letters and every alert in alerts.jsonl on /metrics")
    alerts = [json.loads(x) for x in alerts_path.read_text().splitlines()]

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("vigil_readings_received_total", connector="mqtt", kind="river_gauge") == 5
    assert value("vigil_readings_evaluated_total") == 5
    assert value("vigil_dead_letters_total", reason="not_json") == 3
    assert value("vigil_dead_letters_total", reason="bad_value") == 1
    assert value("vigil_dead_letters_total", reason="unknown_station") == 1
    orange = [a for a in alerts if (a["rule_id"], a["level"]) == ("flood.river_level", "orange")]
    assert value("vigil_alert_events_total", rule="flood.river_level", level="orange") == len(
        orange
    )
    assert len(orange) == 1
    assert value("vigil_ingest_to_alert_seconds_count") == len(alerts)
    latest = {a["fingerprint"]: a["level"] for a in alerts}  # alerts.jsonl is in order
    for level in ("blue", "yellow", "orange", "red"):
        active = sum(1 for x in latest.values() if x == level)
        assert value("vigil_active_alerts", level=level) == active
    assert value("vigil_mqtt_connected") == 1
    assert value("vigil_kernel_seconds_count") >= 1
    assert value("vigil_evaluate_batch_seconds_count") >= 1
    assert value("vigil_ingest_append_seconds_count", connector="mqtt") >= 1
    assert value("vigil_log_size_bytes") > 0
    assert value("vigil_log_records", topic="vigil-test-dead-letter") == 5
    assert value("vigil_log_retention_seconds") == 168 * 3600
    assert {labels for (n, labels) in samples if n == "vigil_consumer_lag_batches"} == {
        (("partition", "0"),),
        (("partition", "1"),),
    }
    assert value("process_resident_memory_bytes") > 0
    # Bounded labels: no station on any series, and reasons are classes, not texts.
    assert not [k for k in samples if any(name == "station" for name, _ in k[1])]

    assert web.get("/healthz").json() == {"status": "alive"}
    assert _listening(int(url.rsplit(":", 1)[1])) == {"0100007F"}  # 127.0.0.1 only
    ready = web.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert set(ready.json()["checks"]) == {"ingest", "log", "rules", "lag"}

    # Dead letters while the gateway runs, every device-written byte escaped.
    listed = _vigil("dead-letters", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("  reason: ") == 5
    assert "\x1b" not in listed.stdout and "\u202e" not in listed.stdout
    assert 'text "{\\"value\\": \\"\\x1b[2J\\u202e\\"}"' in listed.stdout
    assert "hex ff 00 01 1b 5b 33 31 6d" in listed.stdout
    as_json = _vigil("dead-letters", "--config", str(config), "--reason", "unknown_station",
                     "--json")  # fmt: skip
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(r["class"], r["reason"]) for r in records] == [
        ("unknown_station", "unknown station 'NOPE1'")
    ]

    # --follow prints what comes after it started.
    follow = subprocess.Popen(
        [sys.executable, "-m", "engine.tools.cli", "dead-letters", "--config", str(config),
         "--follow", "--reason", "unknown_station", "--interval", "0.2"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(x) for x in follow.stdout or ()], daemon=True
    ).start()
    try:
        seen: list[str] = []

        def follow_saw(station: str) -> bool:
            while not lines.empty():
                seen.append(lines.get())
            return any(station in line for line in seen)

        _until(lambda: follow_saw("NOPE1"), "vigil dead-letters --follow: the first one")
        _pub(mosquitto, "vigil/NOPE2/water_level", b'{"value": 1}')
        _until(lambda: follow_saw("NOPE2"), "vigil dead-letters --follow: a new one")
    finally:
        follow.terminate()
        follow.wait(10)

    status = _vigil("status", "--config", str(config))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "READY" in status.stdout and "NOT READY" not in status.stdout
    assert "mqtt    subscribed" in status.stdout
    assert "dead letters, last hour: bad_value 1, not_json 3, unknown_station 2" in status.stdout
    assert "active alerts: orange 1" in status.stdout

    # The broker goes away: /readyz, / and vigil status say so within seconds.
    mosquitto.stop()

    def not_ready() -> dict[str, Any] | None:
        r = web.get("/readyz")
        return r.json() if r.status_code == 503 else None

    body = _until(not_ready, "/readyz 503 once the broker stopped", timeout=30)
    assert body["checks"]["ingest"]["ok"] is False
    assert body["checks"]["ingest"]["detail"].startswith("MQTT disconnected")
    assert web.get("/").status_code == 503
    down = _vigil("status", "--config", str(config))
    assert down.returncode == 1
    assert "NOT READY" in down.stdout and "ingest  FAIL  MQTT disconnected" in down.stdout
    assert _samples(web.get("/metrics").text)[("vigil_mqtt_connected", ())] == 0

    with Mosquitto(port=mosquitto.port):  # back on its port: ready again after a reconnect
        _until(lambda: web.get("/readyz").status_code == 200, "/readyz 200 after reconnect")
    assert engine.terminate() == 0
    log = (tmp_path / "engine.log").read_text()
    assert "Crashed" not in log and "Traceback" not in log, log


def test_a_web_port_off_loopback_without_token_or_tls_refuses_to_start(tmp_path: Path) -> None:
    config = write_settings(tmp_path, 1883, web_port=free_port(), web={"bind": "0.0.0.0"})
    run = _vigil("run", "--config", str(config))
    assert run.returncode == 2
    line = config.read_text().splitlines().index("web:") + 1  # the section's own line
    assert run.stderr.strip().splitlines() == [
        f"{config}:{line}:1: web: bind '0.0.0.0' is not loopback: set web.token_env (a "
        "bearer token from the environment) or web.tls, or bind 127.0.0.1"
    ]


def test_off_loopback_needs_the_bearer_token_and_speaks_tls(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "web.pem", tmp_path / "web.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    web = {
        "bind": "0.0.0.0",
        "token_env": "VIGIL_TEST_WEB_TOKEN",
        "tls": {"cert_file": str(cert_file), "key_file": str(key_file)},
    }
    config = write_settings(tmp_path, mosquitto.port, web_port=port, web=web)

    unset = _vigil("run", "--config", str(config), env={"VIGIL_TEST_WEB_TOKEN": ""})
    assert unset.returncode == 2
    assert unset.stderr.strip().splitlines() == [
        "web.token_env: environment variable VIGIL_TEST_WEB_TOKEN is not set or empty"
    ]

    os.environ["VIGIL_TEST_WEB_TOKEN"] = token = "s3cret-token"
    engine = EngineProcess(config, tmp_path / "engine.log")
    try:
        engine.start()
        trust = ssl.create_default_context(cafile=str(ca_file))
        client = httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trust)
        _until(lambda: client.get("/healthz").status_code == 401, "401 without the token")
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/readyz", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        good = client.get("/readyz", headers={"Authorization": f"Bearer {token}"})
        assert good.status_code == 200 and good.json()["ready"] is True
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)

        status = _vigil("status", "--config", str(config), "--cacert", str(ca_file))
        assert status.returncode == 0, status.stdout + status.stderr
        assert "READY" in status.stdout
        no_token = _vigil("status", "--config", str(config), "--cacert", str(ca_file),
                          env={"VIGIL_TEST_WEB_TOKEN": ""})  # fmt: skip
        assert no_token.returncode == 2
        assert (
            "401, the gateway wants a bearer token: set VIGIL_TOKEN or VIGIL_TEST_WEB_TOKEN"
            in no_token.stderr
        )
        assert engine.terminate() == 0
    finally:
        del os.environ["VIGIL_TEST_WEB_TOKEN"]
        engine.kill()

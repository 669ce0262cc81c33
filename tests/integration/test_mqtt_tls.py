"""MQTT over TLS with a username and password, against a real mosquitto whose
certificates the test makes (trustme): the gateway connects, evaluates and dead-letters
as over plain TCP; a gateway given the wrong CA logs why it cannot connect."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import trustme

from connectors.mqtt.mosquitto import Mosquitto
from tests.integration.conftest import EngineProcess, write_settings
from tests.integration.test_mqtt_ingest_faults import (
    SENTINEL_RULES,
    _reading,
    _topic,
    _wait_alerts,
)

pytestmark = pytest.mark.integration

USER, PASSWORD = "gateway", "s3cret-pw"


@dataclass
class TlsBroker:
    broker: Mosquitto
    ca_file: Path


def _tls_broker() -> Iterator[TlsBroker]:
    # Not under pytest's tmp_path: mosquitto started as root runs as its own user, which
    # must read these files (pytest's folders are the invoking user's alone).
    tmp = Path(tempfile.mkdtemp(prefix="vigil-tls-"))
    tmp.chmod(0o755)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, chain, key = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_pem.write_to_path(str(key))
    with chain.open("wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    passwords = tmp / "passwords"
    exe = shutil.which("mosquitto_passwd")
    assert exe, "mosquitto_passwd is not installed (apt-get install mosquitto)"
    subprocess.run([exe, "-b", "-c", str(passwords), USER, PASSWORD], check=True, timeout=30)
    for path in (ca_file, chain, key, passwords):
        path.chmod(0o644)  # a test's throwaway key and password
    override = {
        "allow_anonymous": "false",
        "password_file": str(passwords),
        "cafile": str(ca_file),
        "certfile": str(chain),
        "keyfile": str(key),
    }
    try:
        with Mosquitto(override=override) as broker:
            yield TlsBroker(broker, ca_file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def tls_broker() -> Iterator[TlsBroker]:
    yield from _tls_broker()


def _settings(tmp: Path, broker: TlsBroker, ca_file: Path) -> Path:
    rules = tmp / "sentinel.yaml"
    rules.write_text(SENTINEL_RULES)
    mqtt_settings = {
        "host": "127.0.0.1",
        "port": broker.broker.port,
        "client_id": "vigil-test-gateway",
        "username": USER,
        "password_env": "VIGIL_TEST_MQTT_PASSWORD",
        "tls": {"ca_file": str(ca_file)},
    }
    return write_settings(tmp, broker.broker.port, rules=[str(rules)], mqtt=mqtt_settings)


def _publish(broker: TlsBroker, messages: list[tuple[str, bytes, int]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-publisher")
    client.username_pw_set(USER, PASSWORD)
    client.tls_set(ca_certs=str(broker.ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.connect(broker.broker.host, broker.broker.port)
    client.loop_start()
    try:
        for info in [client.publish(t, p, qos=q) for t, p, q in messages]:
            info.wait_for_publish(timeout=60)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_the_gateway_works_over_tls_with_a_password(
    tls_broker: TlsBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_TEST_MQTT_PASSWORD", PASSWORD)
    engine = EngineProcess(_settings(tmp_path, tls_broker, tls_broker.ca_file), tmp_path / "e.log")
    engine.start()
    try:
        extra = ("vigil/HZ001/water_level/raw", b'{"value": 1.0, "ts": 1719763200000}', 1)
        _publish(tls_broker, [extra, _reading("HZ001", 0, 150.0)])
        events = _wait_alerts(tmp_path / "alerts.jsonl", 1, engine)
        assert [(e.station, e.level) for e in events] == [("HZ001", "red")]
        assert engine.terminate() == 0
    finally:
        engine.kill()
    # A topic with a level more than the template: received, and dead-lettered with why
    # (a subscription of the template alone left it with the broker, unseen).
    dead = _topic(tmp_path / "data", "dead-letter")
    assert [(raw, h["vigil-reason"].decode()) for raw, h in dead] == [
        (
            extra[1],
            "topic 'vigil/HZ001/water_level/raw' does not match template "
            "'vigil/{station}/{metric}'",
        )
    ]


def test_a_wrong_ca_is_logged_with_the_reason(
    tls_broker: TlsBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_TEST_MQTT_PASSWORD", PASSWORD)
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    config = _settings(tmp_path, tls_broker, other_ca)
    log = tmp_path / "e.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.tools.cli", "run", "--config", str(config),
             "--loglevel", "warn"],
            stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ},
        )  # fmt: skip
    expected = (
        f"MQTT cannot connect to 127.0.0.1:{tls_broker.broker.port}: TLS certificate verify "
        "failed: self-signed certificate in certificate chain"
    )
    try:
        deadline = time.monotonic() + 120
        while expected not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        text = log.read_text()
        assert expected in text, text[-3000:]
        assert text.count(expected) == 1  # once per reason, not once per retry
    finally:
        proc.kill()
        proc.wait()

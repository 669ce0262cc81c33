"""The service's small parts: sd_notify, the data-directory lock, the MQTT connect
failure's reason (a real TLS handshake against a certificate of another CA)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import trustme

from connectors.mqtt.client import MqttIngest, describe_failure
from connectors.mqtt.options import MqttOptions
from engine.runtime.services.datalock import lock_data_dir
from engine.runtime.services.notify import Notifier


def test_notifier_sends_datagrams_to_notify_socket(tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"})
        assert notifier.watchdog_interval_s == 15.0
        notifier.send(READY=1, STATUS="running")
        assert server.recv(4096) == b"READY=1\nSTATUS=running"


def test_notifier_without_socket_does_nothing() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval_s is None
    notifier.send(READY=1)  # no error


def test_watchdog_for_another_pid_is_not_ours() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert Notifier(env).watchdog_interval_s is None


def test_a_second_holder_of_the_data_directory_is_refused_in_one_line(tmp_path: Path) -> None:
    held = lock_data_dir(tmp_path)
    code = (
        "import sys, pathlib\n"
        "from engine.runtime.services.datalock import DataDirInUse, lock_data_dir\n"
        "try:\n    lock_data_dir(pathlib.Path(sys.argv[1]))\n"
        "except DataDirInUse as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.stdout == (
        f"vigil: data directory {tmp_path} is in use by another vigil process "
        f"(pid {os.getpid()}); stop it first, or give this one another data_dir\n"
    )
    held.close()
    lock_data_dir(tmp_path).close()  # released: free again


def _tls_server(tmp_path: Path) -> tuple[socket.socket, threading.Thread]:
    """A TLS listener whose certificate is signed by a CA the client does not trust."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_a_tls_verify_failure_is_reported_with_its_reason(tmp_path: Path) -> None:
    listener, _ = _tls_server(tmp_path)
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    options = MqttOptions(port=listener.getsockname()[1], ca_file=str(other_ca))
    ingest = MqttIngest(options, produce=None, dead_letter=None)  # type: ignore[arg-type]
    client = ingest._client
    client.connect_async(options.host, options.port, options.keepalive)
    client.loop_start()
    try:
        deadline = time.monotonic() + 60
        while ingest.connection.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.loop_stop()
        listener.close()
    assert ingest.connection.error == (
        "TLS certificate verify failed: unable to get local issuer certificate"
    )
    assert not ingest.connection.connected and ingest.connection.failures >= 1


def test_connect_failures_are_described_for_an_operator() -> None:
    assert describe_failure(ConnectionRefusedError(111, "Connection refused")) == (
        "connection refused"
    )
    assert describe_failure(socket.gaierror(-2, "Name or service not known")) == (
        "name resolution failed: Name or service not known"
    )

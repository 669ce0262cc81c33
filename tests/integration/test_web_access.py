"""The web port's one access rule (``engine/runtime/web_access.py``) on a running gateway,
over a real socket: every route family (metrics, health, status, dead letters, the
dispatcher's API, the console and its event stream, a signed acknowledge link) called
with and without the token, once with a token configured and once without (loopback:
open, as the default bind always was). Real mosquitto, ``vigil run`` with a routing
file whose notifications (and their links) land in a JSONL file. Then the rule from
another address, over TLS, without a token: a verified client certificate passes."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiohttp import web

from connectors.mqtt.mosquitto import Mosquitto
from engine.runtime.web_access import protect, server_ssl_context
from tests.integration.test_dispatch_api import non_loopback_address
from tests.integration.test_dispatch_gateway import Gauges, start_gateway, wait_for

pytestmark = pytest.mark.integration

TOKEN = "web-t0ken"
#: One route of each family; each answers 200 to a caller the rule lets through.
PROTECTED = [
    "/metrics",
    "/healthz",
    "/readyz",
    "/",
    "/vigil/status",
    "/vigil/dead-letters",
    "/api/alerts",
    "/api/silences",
    "/api/stations",
]
#: The duty room's page and its files: a shell without data, open to all.
SHELL = ["/console", "/console/console.js"]


def _stream_status(url: str, headers: dict[str, str]) -> tuple[int, str]:
    """The status of ``/api/stream`` and, when it is 200, its first event."""
    with httpx.stream("GET", url + "/api/stream", headers=headers, timeout=10) as r:
        if r.status_code != 200:
            return r.status_code, ""
        for line in r.iter_lines():
            if line.startswith("event:"):
                return r.status_code, line
    raise AssertionError("the stream ended without an event")


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``vigil alerts --config config *args``, finding the token where the gateway does."""
    return subprocess.run(
        [sys.executable, "-m", "engine.tools.cli", "alerts", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "VIGIL_TOKEN"},
    )  # fmt: skip


def _only_own_pages_change_state(
    client: httpx.Client, url: str, config: Path, right: dict[str, str], configured: bool
) -> None:
    """A page of another site open in the duty room's browser cannot silence anything:
    a cross-origin POST, a ``text/plain`` one (no CORS preflight), a DNS-rebound one
    (its own domain in ``Host``) are refused and change nothing; the console's own
    requests and the CLI still work."""
    silence = {"matchers": ["station=NOPE"], "duration": "1h", "author": "x"}
    cross_site = "refused: a request that changes state must come from this server's own pages"
    for sent in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": url},
    ):
        got = client.post("/api/silences", json=silence, headers={**right, **sent})
        assert got.status_code == 403, (sent, got.text)
        assert got.json()["error"].startswith(cross_site)
    # A form-like body, as a page sends it without asking first.
    plain = client.post(
        "/api/silences",
        content=json.dumps(silence),
        headers={**right, "Content-Type": "text/plain"},
    )
    assert plain.status_code == 415, plain.text
    assert plain.json() == {"error": "send the body as Content-Type: application/json"}
    # DNS rebinding: the browser calls 127.0.0.1 under the attacker's name.
    port = url.rsplit(":", 1)[1]
    rebound = {**right, "Host": f"evil.example:{port}"}
    read = client.get("/api/alerts", headers=rebound)
    wrote = client.post("/api/silences", json=silence, headers=rebound)
    if configured:  # the token is the credential; a rebound page has none
        assert read.status_code == 200, read.text
        assert wrote.status_code == 200, wrote.text
        client.delete(f"/api/silences/{wrote.json()['silence']['id']}", headers=right)
    else:
        assert read.status_code == 403 and "does not name this server" in read.json()["error"]
        assert wrote.status_code == 403, wrote.text
    assert [s for s in client.get("/api/silences", headers=right).json()["silences"]
            if s["state"] != "expired"] == []  # fmt: skip

    # The console's own requests (same origin, as its fetch sends them), by any of the
    # server's names, and the CLI's.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        own = {**right, "Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
        made = client.post("/api/silences", json=silence, headers=own)
        assert made.status_code == 200, (host, made.text)
        sid = made.json()["silence"]["id"]
        gone = client.delete(f"/api/silences/{sid}", headers=own)
        assert gone.status_code == 200, (host, gone.text)
    added = _cli(config, "silence", "station=NOPE", "--duration", "1h", "--author", "cli")
    assert added.returncode == 0, added.stdout + added.stderr
    [by_cli] = [s for s in client.get("/api/silences", headers=right).json()["silences"]
                if s["state"] != "expired"]  # fmt: skip
    assert by_cli["author"] == "cli"
    expired = _cli(config, "silences", "--expire", by_cli["id"])
    assert expired.returncode == 0, expired.stdout + expired.stderr


@pytest.mark.parametrize("configured", [True, False], ids=["token", "no-token"])
def test_every_route_family_goes_through_the_one_rule(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch, configured: bool
) -> None:
    monkeypatch.setenv("VIGIL_TEST_WEB_TOKEN", TOKEN)
    monkeypatch.setenv("VIGIL_TEST_LINK_SECRET", "link-secret-for-tests")
    routes = {
        "version": 1,
        "receivers": [{"name": "log", "type": "jsonl", "path": "duty-log.jsonl"}],
        "route": {"receivers": ["log"], "group_by": ["basin"], "group_wait": "0s",
                  "group_interval": "1s"},
    }  # fmt: skip
    web = {"token_env": "VIGIL_TEST_WEB_TOKEN"} if configured else {}
    engine, url = start_gateway(tmp_path, mosquitto, routes, web=web)
    engine.start()
    gauges = Gauges(mosquitto)
    duty_log = tmp_path / "duty-log.jsonl"
    right = {"Authorization": f"Bearer {TOKEN}"}
    wrong = {"Authorization": "Bearer nope"}
    try:
        gauges.report({"HZ001": 4.0, "HZ002": 2.8, "HZ003": 2.0})
        gauges.report({"HZ001": 4.8, "HZ002": 2.8, "HZ003": 2.0})  # HZ001 yellow

        def notified() -> list[dict[str, Any]]:
            lines = duty_log.read_text().splitlines() if duty_log.exists() else []
            return [a for line in lines for a in json.loads(line)["alerts"]]

        alerts = wait_for("a notification with its link", notified)
        [alert] = alerts
        link = alert["ack_url"]
        assert link.startswith(url + "/ack/")  # the port the gateway serves on

        with httpx.Client(base_url=url, timeout=10) as client:
            wait_for("ready", lambda: client.get("/readyz", headers=right).status_code == 200)
            for path in PROTECTED:
                with_token = client.get(path, headers=right)
                assert with_token.status_code == 200, (path, with_token.text)
                for headers in ({}, wrong):
                    got = client.get(path, headers=headers)
                    if configured:  # loopback too: a token, once set, is asked of everyone
                        assert got.status_code == 401, (path, got.text)
                        assert got.json() == {
                            "error": "missing or wrong token (Authorization: Bearer ...)"
                        }
                        assert got.headers["WWW-Authenticate"] == 'Bearer realm="vigil"'
                    else:
                        assert got.status_code == 200, (path, got.text)
            assert _stream_status(url, right) == (200, "event: change")
            assert _stream_status(url, {}) == ((401, "") if configured else (200, "event: change"))
            for path in SHELL:
                assert client.get(path).status_code == 200, path

            # ``vigil alerts --config`` finds the token where the gateway does.
            listed_cli = _cli(engine.config, "list")
            assert listed_cli.returncode == 0, listed_cli.stdout + listed_cli.stderr
            assert alert["fingerprint"][:12] in listed_cli.stdout

            _only_own_pages_change_state(client, url, engine.config, right, configured)

            # An action refused at the door changes nothing.
            fp = alert["fingerprint"]
            ack = client.post(f"/api/alerts/{fp}/ack", json={"by": "Li", "note": ""})
            assert ack.status_code == (401 if configured else 200), ack.text
            listed = client.get("/api/alerts", headers=right).json()["alerts"]
            assert (listed[0]["acknowledged"] is None) is configured

            # The link is judged by its signature, never the token: a forged one is
            # refused, the real one opens and acknowledges without any header.
            forged = client.get(link[:-3] + "AAA")
            assert forged.status_code == 403 and "Link refused" in forged.text
            page = client.get(link)
            assert page.status_code == 200
            assert ("This alert is acknowledged." in page.text) is not configured
            if configured:
                done = client.post(link, data={"name": "Zhang Min"})
                assert done.status_code == 200 and "Acknowledged by Zhang Min." in done.text
                [taken] = client.get("/api/alerts", headers=right).json()["alerts"]
                assert taken["acknowledged"]["by"] == "Zhang Min (link)"
        assert engine.terminate() == 0
    finally:
        gauges.publisher.close()
        engine.kill()


def test_from_afar_without_a_token_only_a_verified_client_certificate_passes(
    tmp_path: Path,
) -> None:
    """TLS alone names nobody: a caller from another address gets only the open paths;
    with ``client_ca_file`` the handshake verified who it is, and it passes."""
    far = non_loopback_address()
    assert far is not None, "this machine has no non-loopback address to call from"
    ca = trustme.CA()
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "web.pem", tmp_path / "web.key"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ca.issue_cert(far)
    server.cert_chain_pems[0].write_to_path(str(cert_file))
    server.private_key_pem.write_to_path(str(key_file))

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    async def call(client_ca: Path | None, paths: list[str]) -> dict[str, int]:
        app = web.Application()
        protect(app, None)
        for path in ("/metrics", "/api/alerts", "/console", "/ack/{link}"):
            app.router.add_get(path, ok)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(
            runner, far, 0, ssl_context=server_ssl_context(cert_file, key_file, client_ca)
        )
        await site.start()
        port = runner.addresses[0][1]
        trust = ssl.create_default_context(cafile=str(ca_file))
        ca.issue_cert("duty-room.example").configure_cert(trust)  # the caller's certificate
        try:
            async with httpx.AsyncClient(base_url=f"https://{far}:{port}", verify=trust) as client:
                return {p: (await client.get(p)).status_code for p in paths}
        finally:
            await runner.cleanup()

    paths = ["/metrics", "/api/alerts", "/console", "/ack/fp.1.sig"]
    tls_only = asyncio.run(call(None, paths))
    assert tls_only == {"/metrics": 403, "/api/alerts": 403, "/console": 200, "/ack/fp.1.sig": 200}
    certified = asyncio.run(call(ca_file, paths))
    assert certified == dict.fromkeys(paths, 200)

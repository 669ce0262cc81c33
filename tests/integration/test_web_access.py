"""The web port's one access rule (``engine/runtime/web_access.py``) on a running gateway,
over a real socket: every route family (metrics, health, status, dead letters, the
dispatcher's API, the console and its event stream, a signed acknowledge link) called
with and without the token, once with a token configured and once without (loopback:
open, as the default bind always was). Real mosquitto, ``vigil run`` with a routing
file whose notifications (and their links) land in a JSONL file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.mqtt.mosquitto import Mosquitto
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
            listed_cli = subprocess.run(
                [sys.executable, "-m", "engine.tools.cli", "alerts", "--config",
                 str(engine.config), "list"],
                capture_output=True, text=True, timeout=60,
                env={k: v for k, v in os.environ.items() if k != "VIGIL_TOKEN"},
            )  # fmt: skip
            assert listed_cli.returncode == 0, listed_cli.stdout + listed_cli.stderr
            assert alert["fingerprint"][:12] in listed_cli.stdout

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

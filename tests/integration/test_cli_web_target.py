"""``vigil status``, ``vigil dead-letters`` and ``vigil alerts`` find a gateway and
prove who they are by one rule (``engine.tools.web_target``), over a real socket: a
web port behind the access rule, with a token and TLS on the address the settings
bind. Before, ``vigil status`` read ``$VIGIL_WEB_TOKEN`` where ``vigil alerts`` read
``$VIGIL_TOKEN``, and ``vigil alerts --config`` called ``http://127.0.0.1`` whatever
the settings said (TLS: no answer)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from engine.runtime.web_access import protect, server_ssl_context
from engine.tools.cli import main

pytestmark = pytest.mark.integration

TOKEN = "site-t0ken"
COMMANDS = [
    ["status", "--json"],
    ["dead-letters"],
    ["alerts", "list"],
    ["alerts", "silences"],
]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A web port on 127.0.0.1 with TLS and a token, answering the commands' routes;
    yields its settings file and the paths it served."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "web.pem", tmp_path / "web.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    served: list[str] = []
    answers = {
        "/vigil/status": {"ready": {"ready": True}},
        "/vigil/dead-letters": {"records": [], "next": 0, "end": 0},
        "/api/alerts": {"alerts": []},
        "/api/silences": {"silences": []},
    }

    async def answer(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.json_response(answers[request.path])

    loop = asyncio.new_event_loop()
    app = web.Application()
    protect(app, TOKEN)
    for path in answers:
        app.router.add_get(path, answer)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    tls = server_ssl_context(cert_file, key_file, None)
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    (tmp_path / "stations.yaml").write_text("stations: []\n")
    (tmp_path / "flood.yaml").write_text("version: 1\nrules: []\n")
    settings = tmp_path / "vigil.yaml"
    settings.write_text(
        f"stations: stations.yaml\nrules: [flood.yaml]\nweb_port: {port}\n"
        f"web:\n  token_env: SITE_TOKEN\n"
        f"  tls: {{cert_file: {cert_file}, key_file: {key_file}}}\n"
    )
    try:
        yield settings, served
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_reaches_a_tls_gateway_with_its_token(
    command: list[str], gateway: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, served = gateway
    head, *rest = command
    cacert = ["--cacert", str(settings.parent / "ca.pem")]  # the site's private CA
    # What the command line names wins over the environment: a stale $VIGIL_URL (a port
    # nobody listens on) must not take the token elsewhere.
    monkeypatch.setenv("VIGIL_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("VIGIL_TOKEN", raising=False)
    monkeypatch.delenv("SITE_TOKEN", raising=False)
    # The settings' address, port and TLS; no token: the gateway refuses (401).
    assert main([head, "--config", str(settings), *cacert, *rest]) != 0
    assert served == []
    # The token from the variable the settings' web.token_env names.
    monkeypatch.setenv("SITE_TOKEN", TOKEN)
    assert main([head, "--config", str(settings), *cacert, *rest]) == 0
    # $VIGIL_TOKEN, the same for every command, wins over it.
    monkeypatch.setenv("SITE_TOKEN", "stale")
    monkeypatch.setenv("VIGIL_TOKEN", TOKEN)
    assert main([head, "--config", str(settings), *cacert, *rest]) == 0
    # --url with --cacert, the token from $VIGIL_TOKEN.
    url = f"https://127.0.0.1:{settings.read_text().split('web_port: ')[1].split()[0]}"
    assert main([head, "--url", url, *cacert, *rest]) == 0
    assert len(served) == 3 and len(set(served)) == 1

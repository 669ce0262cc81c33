"""A Kafka worker passes the dispatcher's requests to the owner over HTTPS when the
workers' web ports speak it (``web.tls``): before, it always called ``http://``, so with
TLS every forwarded request failed (502), and without it a bearer token crossed the
network in clear. Real sockets, real certificates (trustme): the owner listens on a
non-loopback address behind the web port's access rule and asks for client
certificates; the forwarding worker checks the owner's certificate and presents its own.
Kafka is not needed to find the owner here (``find_owner`` is given the address)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiohttp import web

from engine.contracts.batch import TelemetryBatch
from engine.runtime.dispatch.board import StationBoard
from engine.runtime.dispatch.board_cluster import ClusterBoard, board_route
from engine.runtime.dispatch.forwarding import SERVED_BY, OwnerForwarder
from engine.runtime.web_access import peer_ssl_context, protect, server_ssl_context
from tests.integration.test_dispatch_api import non_loopback_address

pytestmark = pytest.mark.integration


@asynccontextmanager
async def serving(
    app: web.Application, host: str, ssl_context: object = None
) -> AsyncIterator[int]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, 0, ssl_context=ssl_context).start()  # type: ignore[arg-type]
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def _write(ca: trustme.CA, host: str, folder: Path) -> tuple[Path, Path, Path]:
    """``host``'s certificate and key, and the CA file, as a worker's settings name them."""
    folder.mkdir()
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "web.pem", folder / "web.key"
    ca.cert_pem.write_to_path(str(ca_file))
    cert = ca.issue_cert(host)
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return ca_file, cert_file, key_file


async def _forwarded(forwarder: OwnerForwarder) -> httpx.Response:
    """A request to the forwarding worker (on loopback), passed to the owner."""
    app = web.Application()
    app.router.add_get("/api/alerts", forwarder.api)
    async with serving(app, "127.0.0.1") as port, httpx.AsyncClient() as client:
        return await client.get(
            f"http://127.0.0.1:{port}/api/alerts", headers={"Authorization": "Bearer t"}
        )


def test_a_request_reaches_an_https_owner_that_asks_for_client_certificates(
    tmp_path: Path,
) -> None:
    far = non_loopback_address()
    assert far is not None, "this machine has no non-loopback address to serve on"
    ca = trustme.CA()
    ca_file, owner_cert, owner_key = _write(ca, far, tmp_path / "owner")
    _, worker_cert, worker_key = _write(ca, far, tmp_path / "worker")
    stranger_ca, _, _ = _write(trustme.CA(), far, tmp_path / "stranger")

    async def alerts(request: web.Request) -> web.Response:
        return web.json_response(
            {"alerts": [], "authorization": request.headers.get("Authorization")}
        )

    async def run() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        owner = web.Application()
        protect(owner, None)  # no token: only a verified client certificate passes
        owner.router.add_get("/api/alerts", alerts)
        tls = server_ssl_context(owner_cert, owner_key, ca_file)
        async with serving(owner, far, tls) as port:
            url = f"https://{far}:{port}"

            async def owner_url() -> str:
                return url

            trusted = peer_ssl_context(worker_cert, worker_key, ca_file, ca_file)
            distrusting = peer_ssl_context(worker_cert, worker_key, stranger_ca, ca_file)
            plain = OwnerForwarder(lambda: _as_http(url))
            return (
                await _forwarded(OwnerForwarder(owner_url, trusted)),
                await _forwarded(OwnerForwarder(owner_url, distrusting)),
                await _forwarded(plain),
            )

    async def _as_http(url: str) -> str:
        return url.replace("https://", "http://")

    passed, refused, plain = asyncio.run(run())
    assert passed.status_code == 200, passed.text
    assert passed.json() == {"alerts": [], "authorization": "Bearer t"}
    assert passed.headers[SERVED_BY].startswith("https://")
    # The owner's certificate is checked: one from another CA is not trusted.
    assert refused.status_code == 502
    assert "CERTIFICATE_VERIFY_FAILED" in refused.text
    # What the worker did before: plain HTTP to a TLS port gets no answer.
    assert plain.status_code == 502


def test_the_owner_merges_a_peers_board_over_https_with_the_token(tmp_path: Path) -> None:
    """``ClusterBoard`` polls a peer's ``/api/board`` with the forwarder's TLS context
    (its client certificate) and the worker's token: the peer's station is on the merged
    board; with another token the peer refuses (401), and nothing of it is shown."""
    far = non_loopback_address()
    assert far is not None, "this machine has no non-loopback address to serve on"
    ca = trustme.CA()
    ca_file, peer_cert, peer_key = _write(ca, far, tmp_path / "peer")
    _, worker_cert, worker_key = _write(ca, far, tmp_path / "worker")
    theirs = StationBoard()
    theirs.observe(TelemetryBatch.from_rows([("NB101", "water_level", 1_719_792_000_000, 2.5)]))

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        peer = web.Application()
        protect(peer, "tok")
        peer.router.add_get("/api/board", board_route(theirs, "peer-epoch"))
        tls = server_ssl_context(peer_cert, peer_key, ca_file)
        async with serving(peer, far, tls) as port:
            url = f"https://{far}:{port}"

            async def members() -> list[str]:
                return [url]

            async def no_owner() -> None:
                return None

            client_tls = peer_ssl_context(worker_cert, worker_key, ca_file, ca_file)
            forwarder = OwnerForwarder(no_owner, client_tls)
            token, other = {"Authorization": "Bearer tok"}, {"Authorization": "Bearer no"}
            merged = ClusterBoard(StationBoard(), forwarder, members, token)
            wrong = ClusterBoard(StationBoard(), forwarder, members, other)
            await merged.refresh()
            await wrong.refresh()
            return merged.of("NB101"), wrong.of("NB101")

    shown, refused = asyncio.run(run())
    assert shown["water_level"].value == 2.5
    assert refused == {}

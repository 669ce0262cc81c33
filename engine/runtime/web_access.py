"""Who may use the web port: one rule, in front of every route of it.

The gateway's and a Kafka worker's web port (``/metrics``, ``/healthz``, ``/readyz``,
``/vigil/...``, the dispatcher's ``/api/...`` with the console's event stream, Faust's
own pages) and ``vigil ingest mqtt``'s all pass through ``protect``'s middleware, which
decides before any handler runs:

1. ``/ack/<link>``: passes. A signed acknowledge link is its own credential; its
   handler checks the signature and the expiry (``engine.runtime.dispatch.links``)
   and acknowledges that one alert only. The person who follows it from a message
   carries no token.
2. ``/console`` and ``/console/<file>``: pass. The duty room's page and its script are
   a shell without data (a browser's address bar sends no header); the page asks for
   the token and sends it with every ``/api/`` call it makes.
3. With a token configured (``web.token_env``): every other request needs
   ``Authorization: Bearer <token>``, from loopback too; else 401.
4. Without one: a loopback caller passes (the default bind, as before); a caller from
   another address passes only with a client certificate the server verified
   (``web.tls.client_ca_file``), else 403. TLS alone encrypts; it says nobody's name.

Refusals are ``{"error": "<what to do>"}`` JSON, like the API's errors.
"""

from __future__ import annotations

import hmac
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

__all__ = ["decide", "protect", "server_ssl_context"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The middleware an app got from ``protect`` (so that a second call is refused).
_PROTECTED = web.AppKey("vigil_web_access", str)


def server_ssl_context(cert_file: Path, key_file: Path, client_ca: Path | None) -> ssl.SSLContext:
    """An HTTPS server context; with ``client_ca``, clients must present a certificate
    that CA signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert_file), str(key_file))
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _open_path(path: str) -> bool:
    """Rules 1 and 2: the paths whose handlers need no token."""
    return path.startswith("/ack/") or path == "/console" or path.startswith("/console/")


def _loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:  # a Unix socket, or no address at all
        return False


def _client_certified(request: web.Request) -> bool:
    """Whether the TLS handshake verified a client certificate (an empty dict when the
    server asked for none)."""
    transport = request.transport
    return bool(transport is not None and transport.get_extra_info("peercert"))


def decide(request: web.Request, token: str | None) -> web.Response | None:
    """The refusal for ``request`` under the rule above, or None when it may pass."""
    if _open_path(request.path):
        return None
    if token is not None:
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return None
        return web.json_response(
            {"error": "missing or wrong token (Authorization: Bearer ...)"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="vigil"'},
        )
    if _loopback(request) or _client_certified(request):
        return None
    return web.json_response(
        {"error": "this port answers loopback only; set web.token_env (or client "
                  "certificates: web.tls.client_ca_file)"},
        status=403,
    )  # fmt: skip


def protect(app: web.Application, token: str | None) -> None:
    """Put the rule in front of every route of ``app`` (outermost, before the app
    starts). ``token``: the bearer token every caller must send, None for none. Once
    per app: a second call raises, so that two rules never disagree."""
    if _PROTECTED in app:
        raise RuntimeError("the web port's access rule is installed already")

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = decide(request, token)
        return refused if refused is not None else await handler(request)

    app[_PROTECTED] = "installed"
    app.middlewares.insert(0, access)

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
4. Without one: a loopback caller passes (the default bind, as before) when its
   ``Host`` names a loopback address, ``localhost``, ``web.bind`` or the host of
   ``dispatch.public_url`` (a DNS-rebound page names its own host: 403); a caller from
   another address passes only with a client certificate the server verified
   (``web.tls.client_ca_file``), else 403. TLS alone encrypts; it says nobody's name.
5. Before 3 and 4, whatever the token: a request that changes state (not GET/HEAD)
   from another site is refused, 403: its ``Origin``, when present, is neither this
   server's own (scheme and ``Host``) nor ``dispatch.public_url``'s, or its
   ``Sec-Fetch-Site`` is ``cross-site`` or ``same-site``. A page in the duty room's
   browser can send a form-like POST to the loopback port without any preflight; this
   stops it. (The API also takes only ``application/json`` bodies: 415.)

Refusals are ``{"error": "<what to do>"}`` JSON, like the API's errors.
"""

from __future__ import annotations

import hmac
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

if TYPE_CHECKING:
    from engine.runtime.config import Settings

__all__ = ["Site", "decide", "peer_ssl_context", "protect", "server_ssl_context", "site_of"]

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


def peer_ssl_context(
    cert_file: Path, key_file: Path, peer_ca: Path | None, client_ca: Path | None
) -> ssl.SSLContext:
    """An HTTPS client context for calling another worker's web port: its certificate
    checked against ``peer_ca`` (the system's trust store when None), and, where the
    workers ask for client certificates (``client_ca`` set), this worker's own
    ``cert_file``/``key_file`` presented."""
    ctx = ssl.create_default_context(cafile=str(peer_ca) if peer_ca else None)
    if client_ca is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file))
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


class Site:
    """Who this server is besides what each request says: the host names a loopback
    caller may use (rule 4) and the origins a state-changing request may come from
    (rule 5), beyond the request's own. ``bind``: ``web.bind``; ``public_url``:
    ``dispatch.public_url`` (the address people reach the port at, through a proxy)."""

    def __init__(self, bind: str | None = None, public_url: str | None = None) -> None:
        hosts = {"localhost"}
        if bind and not _unspecified(bind):
            hosts.add(bind.lower())
        self.origins: frozenset[str] = frozenset()
        if public_url:
            url = urlsplit(public_url)
            if url.hostname:
                hosts.add(url.hostname.lower())
                self.origins = frozenset({_origin(url.scheme, url.hostname, url.port)})
        self.hosts: frozenset[str] = frozenset(hosts)


def site_of(settings: Settings) -> Site:
    """The ``Site`` of a configuration: ``web.bind`` and ``dispatch.public_url``."""
    public_url = settings.dispatch.public_url if settings.dispatch is not None else None
    return Site(settings.web.bind, public_url)


def _origin(scheme: str, hostname: str, port: int | None) -> str:
    """An origin as a browser writes it: no default port, IPv6 in brackets."""
    scheme, hostname = scheme.lower(), hostname.lower()
    host = f"[{hostname}]" if ":" in hostname else hostname
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


def _unspecified(address: str) -> bool:
    """``0.0.0.0`` or ``::``: every address, so no name of this host."""
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


_SAFE_METHODS = frozenset({"GET", "HEAD"})


def _cross_site(request: web.Request, site: Site) -> bool:
    """Rule 5: whether a state-changing request comes from another site's page."""
    if request.method in _SAFE_METHODS:
        return False
    if request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:  # not sent by a browser (the CLI, curl), or a same-origin GET-like
        return False
    own = f"{request.scheme}://{request.host}".lower()
    return origin.lower() not in site.origins | {own}


def _host_is_ours(request: web.Request, site: Site) -> bool:
    """Rule 4: whether ``Host`` names this server for a loopback caller (a DNS-rebound
    page sends its own domain)."""
    host = urlsplit(f"//{request.host}").hostname or ""
    if host in site.hosts:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def decide(
    request: web.Request, token: str | None, site: Site | None = None
) -> web.Response | None:
    """The refusal for ``request`` under the rule above, or None when it may pass.
    ``site``: the names rules 4 and 5 also accept (none beyond the request's own by
    default)."""
    if _open_path(request.path):
        return None
    site = site or Site()
    if _cross_site(request, site):
        return web.json_response(
            {"error": "refused: a request that changes state must come from this "
                      "server's own pages (Origin / Sec-Fetch-Site name another site)"},
            status=403,
        )  # fmt: skip
    if token is not None:
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return None
        return web.json_response(
            {"error": "missing or wrong token (Authorization: Bearer ...)"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="vigil"'},
        )
    if _client_certified(request):
        return None
    if _loopback(request):
        if _host_is_ours(request, site):
            return None
        return web.json_response(
            {"error": f"refused: Host {request.host!r} does not name this server; use "
                      "127.0.0.1, localhost, web.bind or dispatch.public_url's host"},
            status=403,
        )  # fmt: skip
    return web.json_response(
        {"error": "this port answers loopback only; set web.token_env (or client "
                  "certificates: web.tls.client_ca_file)"},
        status=403,
    )  # fmt: skip


def protect(app: web.Application, token: str | None, site: Site | None = None) -> None:
    """Put the rule in front of every route of ``app`` (outermost, before the app
    starts). ``token``: the bearer token every caller must send, None for none;
    ``site``: see ``Site``. Once per app: a second call raises, so that two rules never
    disagree."""
    if _PROTECTED in app:
        raise RuntimeError("the web port's access rule is installed already")

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = decide(request, token, site)
        return refused if refused is not None else await handler(request)

    app[_PROTECTED] = "installed"
    app.middlewares.insert(0, access)

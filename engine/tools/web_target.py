"""Where a ``vigil`` command finds a running gateway's web port, and how it proves who
it is: one rule for every command that calls its API (``vigil status``, ``vigil
dead-letters``, ``vigil alerts``).

* **Address:** ``--url``, else ``--config``'s ``web_port`` on ``web.bind`` (loopback
  when it binds every interface), ``https`` with ``web.tls``; else ``$VIGIL_URL``, else
  ``http://127.0.0.1:6066``.
* **Token** (sent as ``Authorization: Bearer``): the variable ``--token-env`` names,
  else ``$VIGIL_TOKEN``, else the variable ``--config``'s ``web.token_env`` names.
* **Server certificate:** checked against ``--cacert``; else, with ``--config``'s
  ``web.tls``, against the server's own certificate (a self-signed certificate is its
  own CA); else the system's trust store.
"""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass

__all__ = ["DEFAULT_URL", "TOKEN_ENV", "WebTarget", "add_target_args", "web_target"]

#: The gateway's address when nothing names one.
DEFAULT_URL = "http://127.0.0.1:6066"
#: The token's variable when neither ``--token-env`` nor the settings name one.
TOKEN_ENV = "VIGIL_TOKEN"


@dataclass(frozen=True)
class WebTarget:
    """A gateway's web port as a command calls it."""

    #: ``scheme://host:port``, no trailing slash.
    base: str
    #: The bearer token, None when no variable holds one.
    token: str | None
    #: The variables the token is looked for in, in order (for "set X" messages).
    token_envs: tuple[str, ...]
    #: What the server's certificate is checked against (httpx's ``verify``).
    verify: ssl.SSLContext | bool

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def add_target_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """``--url`` | ``--config`` (one of them when ``required``), ``--token-env``,
    ``--cacert``."""
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument("--url", help="the gateway's web address, e.g. http://127.0.0.1:6066")
    where.add_argument("--config", help="the gateway's settings file (finds its web port)")
    parser.add_argument(
        "--token-env", help=f"environment variable holding the bearer token (else {TOKEN_ENV})"
    )
    parser.add_argument("--cacert", help="CA bundle to verify the gateway's TLS certificate")


def web_target(args: argparse.Namespace) -> WebTarget:
    """The gateway ``args`` (from ``add_target_args``) name. Raises ``ValueError`` when
    ``--config`` names a gateway without a web port, ``ConfigError`` for a bad file."""
    token_envs = [args.token_env, TOKEN_ENV]
    verify: ssl.SSLContext | bool = True
    cafile = args.cacert
    if args.url:
        base = args.url
    elif args.config:
        from engine.runtime.config import load_settings

        settings = load_settings(args.config)
        if settings.web_port is None:
            raise ValueError(f"{args.config}: web_port is not set: the gateway serves no API")
        web = settings.web
        host = "127.0.0.1" if web.bind in ("0.0.0.0", "::", "") else web.bind
        host = f"[{host}]" if ":" in host else host
        base = f"{'https' if web.tls else 'http'}://{host}:{settings.web_port}"
        token_envs.append(web.token_env)
        if web.tls and not cafile:
            cafile = str(web.tls.cert_file)
    else:  # what the command line names wins over the environment
        base = os.environ.get("VIGIL_URL") or DEFAULT_URL
    if cafile:
        verify = ssl.create_default_context(cafile=cafile)
    named = [env for env in token_envs if env]
    token = next((os.environ[env] for env in named if os.environ.get(env)), None)
    return WebTarget(base.rstrip("/"), token, tuple(named), verify)

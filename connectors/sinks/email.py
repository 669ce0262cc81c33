"""E-mail receiver: SMTP with STARTTLS and login (aiosmtplib), to several recipients.

Each notification is one message to every address in ``to``, ``multipart/alternative``
with the plain text (``render_text``) and an HTML version of the same; the subject is
``render_line``. ``Message-ID`` is derived from the notification's key (and the key is in
``X-Vigil-Key``), so a repeat after a crash carries the same id and mail clients that
dedupe by it show it once.

Security is ``starttls`` (the default; the server must offer it, else nothing is sent),
``tls`` (implicit TLS, port 465) or ``none`` (a relay on loopback). The server's
certificate is checked against the system's CAs, or ``ca_file`` for a private CA.
The password comes from the environment variable ``password_env`` names.

``send`` returns once the server accepted the message (250 after DATA). If the server
refuses some recipients but accepts others, the message went out: the refusals are
logged, not raised (raising would send it again to those who have it). Connection
failures, timeouts and 4xx answers are retried with backoff; 5xx answers (bad login,
every recipient refused) are permanent.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Literal

import aiosmtplib
from pydantic import Field, SecretStr, model_validator

from connectors.sinks.common import Backoff, ReceiverConfig, Sleep, secret_from_env, with_retries
from connectors.sinks.render import format_time, level_name, render_line, render_text
from engine.contracts.alerts import Level
from engine.contracts.notification import DeliveryError, Notification

__all__ = ["EmailConfig", "EmailReceiver", "build_message", "message_id"]

log = logging.getLogger(__name__)

_HTML_COLOUR = {
    Level.NONE: "#2e7d32",
    Level.BLUE: "#1e6fd9",
    Level.YELLOW: "#c79a00",
    Level.ORANGE: "#e06c00",
    Level.RED: "#d7191c",
}


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class EmailConfig(ReceiverConfig):
    type: Literal["email"]
    host: str = Field(min_length=1)
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password_env: str | None = None
    ca_file: Path | None = None
    sender: str = Field(alias="from", min_length=3)
    to: tuple[str, ...] = Field(min_length=1)
    timeout_s: float = Field(30.0, gt=0, le=300)
    retry: Backoff = Backoff()

    @model_validator(mode="after")
    def _login_pair(self) -> EmailConfig:
        if (self.username is None) != (self.password_env is None):
            raise ValueError("give both username and password_env, or neither")
        if self.username and self.security == "none" and self.host not in _LOOPBACK:
            raise ValueError("security none would send the password in clear; use starttls")
        return self


def message_id(key: str) -> str:
    """The same ``Message-ID`` for the same notification key, every time."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@vigil>"


def _html(n: Notification, config: EmailConfig) -> str:
    lang, tz = config.lang, config.tz
    colour = _HTML_COLOUR[Level.parse(n.level)]
    parts = [
        '<!DOCTYPE html><html><body style="font-family:sans-serif">',
        f'<h2 style="color:{colour}">{html.escape(render_line(n, lang))}</h2>',
    ]
    if n.note:
        parts.append(f"<p><em>{html.escape(n.note)}</em></p>")
    parts.append("<ul>")
    for a in sorted(n.alerts, key=lambda a: (not n.is_firing(a), -Level.parse(n.shown_level(a)))):
        firing = n.is_firing(a)
        tag = level_name(n.shown_level(a) if firing else a.previous_level, lang)
        if a.fingerprint in n.latched:
            tag = (
                f"{tag}(数据已恢复,待确认后解除)"
                if lang == "zh"
                else f"{tag}, latched: data cleared"
            )
        elif not firing:
            tag = f"{tag}解除" if lang == "zh" else f"all clear (was {tag})"
        since = format_time(a.started_at, tz)
        link = n.links.get(a.fingerprint)
        ack = (
            f' <a href="{html.escape(link)}">{"确认" if lang == "zh" else "Acknowledge"}</a>'
            if link
            else ""
        )
        item_colour = _HTML_COLOUR[Level.parse(n.shown_level(a))]
        parts.append(
            f'<li><b style="color:{item_colour}">{html.escape(tag)}</b> '
            f"{html.escape(a.summary)}<br>{html.escape(a.station)} · {html.escape(a.metric)} "
            f"{a.value:g} / {a.threshold:g} · {html.escape(since)}{ack}</li>"
        )
    parts.append(f"</ul><p>Vigil · {html.escape(format_time(n.created_at, tz))}</p>")
    parts.append("</body></html>")
    return "".join(parts)


def build_message(n: Notification, config: EmailConfig) -> EmailMessage:
    """The message for ``n``: subject, addresses, stable id, text and HTML parts."""
    msg = EmailMessage()
    msg["Subject"] = render_line(n, config.lang)
    msg["From"] = config.sender
    msg["To"] = ", ".join(config.to)
    msg["Date"] = formatdate(n.created_at / 1000, usegmt=True)
    msg["Message-ID"] = message_id(n.key)
    msg["X-Vigil-Key"] = n.key
    msg.set_content(render_text(n, config.lang, config.tz))
    msg.add_alternative(_html(n, config), subtype="html")
    return msg


class EmailReceiver:
    """One SMTP session per notification: a duty mailbox gets a few messages an hour,
    and a fresh session never trips over a server's idle timeout."""

    def __init__(self, name: str, config: EmailConfig, *, sleep: Sleep = asyncio.sleep) -> None:
        self.name = name
        self.config = config
        self._password: SecretStr | None = (
            secret_from_env(name, "password_env", config.password_env)
            if config.password_env
            else None
        )
        self._sleep = sleep

    async def send(self, n: Notification) -> None:
        message = build_message(n, self.config)

        async def attempt() -> None:
            await self._submit(message)

        await with_retries(self.name, attempt, self.config.retry, self._sleep)

    async def _submit(self, message: EmailMessage) -> None:
        c = self.config
        try:
            refused, _ = await aiosmtplib.send(
                message,
                hostname=c.host,
                port=c.port,
                username=c.username,
                password=self._password.get_secret_value() if self._password else None,
                use_tls=c.security == "tls",
                start_tls=c.security == "starttls",
                cert_bundle=str(c.ca_file) if c.ca_file else None,
                timeout=c.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:  # every recipient refused
            codes = [r.code for r in exc.recipients]
            raise DeliveryError(
                self.name,
                f"every recipient refused: {[str(r) for r in exc.recipients]}",
                retryable=all(400 <= code < 500 for code in codes),
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:  # bad login, refused sender, data
            raise DeliveryError(
                self.name, f"SMTP {exc.code}: {exc.message}", retryable=400 <= exc.code < 500
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:  # refused, reset, timed out
            raise DeliveryError(self.name, f"{type(exc).__name__}: {exc}", retryable=True) from exc
        if refused:
            log.warning("receiver %r: server refused %s", self.name, sorted(refused))

    async def aclose(self) -> None:
        return None  # no session outlives a send

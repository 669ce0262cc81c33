"""HTTP webhook receiver: Vigil's own signed JSON, or a WeCom / DingTalk group robot.

Template ``vigil`` POSTs ``Notification.to_dict()`` as UTF-8 JSON (documented in
``connectors/sinks/README.md``) with headers:

- ``X-Vigil-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>``, keyed with the
  shared secret from the environment variable ``secret_env`` names;
- ``Idempotency-Key: <notification key>``, the same on every retry and after a restart:
  the receiving side drops a key it has seen.

Templates ``wecom`` and ``dingtalk`` POST the robot's own body (``robots``); DingTalk's
optional signing adds ``timestamp`` and ``sign`` to the query. The robot's webhook URL
holds its credential (``key=`` / ``access_token=``), so give it through ``url_env``.

A 2xx (and, for a robot, ``errcode`` 0) is delivered. Connection failures, timeouts,
408, 425, 429, 5xx and the robots' rate-limit codes are retried with exponential backoff
(``retry``), then raised as retryable; any other answer is a permanent DeliveryError.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any, Literal

import httpx
from pydantic import Field, HttpUrl, SecretStr, model_validator

from connectors.sinks.common import (
    Backoff,
    ReceiverConfig,
    Sleep,
    secret_from_env,
    url_of,
    with_retries,
)
from connectors.sinks.robots import dingtalk_body, dingtalk_sign, robot_refusal, wecom_body
from engine.contracts.notification import DeliveryError, Notification

__all__ = ["WebhookConfig", "WebhookReceiver", "sign_body"]

_RETRYABLE_STATUS = {408, 425, 429}


class WebhookConfig(ReceiverConfig):
    type: Literal["webhook"]
    #: The endpoint; exactly one of ``url`` and ``url_env`` (a robot's URL is a secret).
    url: HttpUrl | None = None
    url_env: str | None = None
    template: Literal["vigil", "wecom", "dingtalk"] = "vigil"
    #: Robots only: their message type.
    msgtype: Literal["markdown", "text"] = "markdown"
    #: ``vigil``: the HMAC key of ``X-Vigil-Signature`` (required); ``dingtalk``: the
    #: robot's 加签 secret (``SEC...``, optional); ``wecom``: not allowed (no signing).
    secret_env: str | None = None
    #: Robots only: mobiles to @-mention (the duty officer's phone).
    mention_mobiles: tuple[str, ...] = ()
    timeout_s: float = Field(10.0, gt=0, le=120)
    retry: Backoff = Backoff()

    @model_validator(mode="after")
    def _consistent(self) -> WebhookConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url and url_env")
        if self.template == "vigil" and self.secret_env is None:
            raise ValueError("template vigil signs every body: set secret_env")
        if self.template == "wecom" and self.secret_env is not None:
            raise ValueError("WeCom robots have no signing; the key in url_env authenticates")
        return self


def sign_body(secret: str, body: bytes) -> str:
    """The ``X-Vigil-Signature`` value of ``body``: ``sha256=<lowercase hex>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookReceiver:
    """``send`` POSTs one notification and returns once the far side confirmed it."""

    def __init__(
        self,
        name: str,
        config: WebhookConfig,
        *,
        sleep: Sleep = asyncio.sleep,
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.name = name
        self.config = config
        self._url = url_of(name, config.url, config.url_env)
        self._secret: SecretStr | None = (
            secret_from_env(name, "secret_env", config.secret_env) if config.secret_env else None
        )
        self._sleep = sleep
        self._now_ms = now_ms  # DingTalk's signed timestamp: the wall clock
        self._client = httpx.AsyncClient(timeout=config.timeout_s, follow_redirects=False)

    def _body(self, n: Notification) -> dict[str, Any]:
        c = self.config
        if c.template == "wecom":
            return wecom_body(n, c.msgtype, c.lang, c.tz, c.mention_mobiles)
        if c.template == "dingtalk":
            return dingtalk_body(n, c.msgtype, c.lang, c.tz, c.mention_mobiles)
        return n.to_dict()

    async def send(self, n: Notification) -> None:
        body = json.dumps(self._body(n), ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", "Idempotency-Key": n.key}
        if self.config.template == "vigil" and self._secret is not None:
            headers["X-Vigil-Signature"] = sign_body(self._secret.get_secret_value(), body)

        async def attempt() -> None:
            await self._post(body, headers)

        await with_retries(self.name, attempt, self.config.retry, self._sleep)

    async def _post(self, body: bytes, headers: dict[str, str]) -> None:
        # Not httpx's ``params=``: it replaces the URL's own query (the robot's key).
        url = httpx.URL(self._url)
        if self.config.template == "dingtalk" and self._secret is not None:
            ts = self._now_ms()  # fresh per attempt: DingTalk refuses an hour-old one
            sign = dingtalk_sign(self._secret.get_secret_value(), ts)
            url = url.copy_merge_params({"timestamp": str(ts), "sign": sign})
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.TransportError as exc:  # refused, reset, timed out
            raise DeliveryError(self.name, f"{type(exc).__name__}: {exc}", retryable=True) from exc
        status = response.status_code
        if not 200 <= status < 300:
            retryable = status >= 500 or status in _RETRYABLE_STATUS
            raise DeliveryError(
                self.name, f"HTTP {status}: {response.text[:200]!r}", retryable=retryable
            )
        template = self.config.template
        if template != "vigil":
            try:
                answer = response.json()
            except ValueError:
                answer = response.text
            refusal = robot_refusal(template, answer)
            if refusal is not None:
                raise DeliveryError(self.name, refusal[0], retryable=refusal[1])

    async def aclose(self) -> None:
        await self._client.aclose()

"""SMS receiver: a generic HTTP SMS API in the Chinese template-and-parameters model.

Chinese SMS providers send only texts whose template (``templates.firing`` /
``templates.resolved``, ids registered with the provider together with a signature,
``sign_name``) was approved beforehand; a request names the template and fills its
variables. ``params`` maps the provider's variable names to what Vigil fills in:

=============== ================================================================
``level``       the group's level: 红色预警 … (``解除`` when resolved); ``lang``
``where``       the group's place (its grouping labels' values, else the stations)
``count``       how many alerts the group holds
``station``     the worst alert's station id
``summary``     the worst alert's summary (the rule's own text)
``value``       the worst alert's value; ``threshold`` its threshold
``since``       when the worst alert's episode began, ``MM-DD HH:MM`` local time
``line``        the whole one-line rendering (``render_line``)
``link``        the worst alert's acknowledge link (empty if none)
``label:NAME``  group label NAME, else the worst alert's label NAME, else empty
=============== ================================================================

The worst alert is the highest-level firing one (when resolved, the one that was
highest before it cleared).

**Length.** Providers cut each variable (often at 20 or 35 characters) and charge per
segment: a message (signature included) of at most 70 characters is one segment; a
longer one is sent as several of 67 characters each (UCS-2 with a concatenation header),
every character, Chinese or ASCII, counting as one. Vigil cuts each value to
``max_param_chars`` (ending it with ``…``); if ``template_text`` (the registered text
with ``${name}`` placeholders) is given, it also shortens the longest values until the
whole message fits ``max_segments`` segments, so a flood never costs ten segments per
phone. ``template_text`` that cannot fit even with empty values is a config error.

**Request.** One POST per ``batch_size`` recipients, JSON with the provider's field names
(``fields``): phones (a list, or comma-joined), template id, params (an object, a JSON
string as Aliyun wants, or a list in ``params`` order as Tencent wants), signature and the
notification key as the provider's out-id (``<key>#<batch>`` when there are several
batches), plus ``Idempotency-Key``. A token from ``token_env`` goes in ``token_header``.
Success is a 2xx whose JSON ``success_field`` (a dotted path) equals ``success_value``,
or any 2xx when ``success_field`` is unset; statuses are retried as for webhooks, and a
2xx that is not a success is permanent unless its value is one of ``retry_values``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict
from datetime import datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, model_validator

from connectors.sinks.common import (
    Backoff,
    ReceiverConfig,
    Sleep,
    secret_from_env,
    url_of,
    with_retries,
)
from connectors.sinks.render import level_name, render_line, where
from engine.contracts.alerts import AlertEvent, Level
from engine.contracts.notification import DeliveryError, Notification

__all__ = ["SmsConfig", "SmsFields", "SmsReceiver", "fill_params", "segments"]

SEGMENT_CHARS = 70  # one message
LONG_SEGMENT_CHARS = 67  # each part of a longer one
_SOURCES = {"level", "where", "count", "station", "summary", "value", "threshold", "since"}
_SOURCES |= {"line", "link"}
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
_PHONE = re.compile(r"^\+?\d{5,15}$")
_RETRYABLE_STATUS = {408, 425, 429}


def segments(chars: int) -> int:
    """How many segments a message of ``chars`` characters costs (UCS-2)."""
    return 1 if chars <= SEGMENT_CHARS else -(-chars // LONG_SEGMENT_CHARS)


class SmsFields(BaseModel):
    """The provider's JSON field names; ``None`` leaves a field out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    phones: str = "phones"
    template: str = "template_id"
    params: str = "params"
    sign: str | None = "sign_name"
    key: str | None = "out_id"


class SmsConfig(ReceiverConfig):
    type: Literal["sms"]
    url: HttpUrl | None = None
    url_env: str | None = None
    token_env: str | None = None
    token_header: str = "Authorization"
    token_prefix: str = "Bearer "
    sign_name: str | None = None
    templates: dict[Literal["firing", "resolved"], str]
    template_text: dict[Literal["firing", "resolved"], str] = Field(default_factory=dict)
    params: dict[str, str] = Field(min_length=1)
    fields: SmsFields = SmsFields()
    phones_as: Literal["list", "comma"] = "list"
    params_as: Literal["object", "json_string", "list"] = "object"
    recipients: tuple[str, ...] = Field(min_length=1)
    batch_size: int = Field(100, ge=1, le=1000)
    max_param_chars: int = Field(20, ge=1, le=500)
    max_segments: int = Field(1, ge=1, le=10)
    success_field: str | None = None
    success_value: str | int | bool = "OK"
    #: Values of ``success_field`` that mean "later" (the provider's rate limit).
    retry_values: tuple[str | int, ...] = ()
    timeout_s: float = Field(10.0, gt=0, le=120)
    retry: Backoff = Backoff()

    @model_validator(mode="after")
    def _consistent(self) -> SmsConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url and url_env")
        missing = {"firing", "resolved"} - set(self.templates)
        if missing:
            raise ValueError(f"templates: give a template id for {sorted(missing)}")
        for name, source in self.params.items():
            if source not in _SOURCES and not source.startswith("label:"):
                known = ", ".join(sorted(_SOURCES))
                raise ValueError(
                    f"params.{name}: unknown source {source!r} (one of {known}, label:NAME)"
                )
        for phone in self.recipients:
            if not _PHONE.match(phone):
                raise ValueError(f"recipients: {phone!r} is not a phone number")
        for status, text in self.template_text.items():
            unknown = set(_PLACEHOLDER.findall(text)) - set(self.params)
            if unknown:
                raise ValueError(
                    f"template_text.{status}: ${{{sorted(unknown)[0]}}} is not in params"
                )
            empty = len(self.message(status, dict.fromkeys(self.params, "")))
            if segments(empty) > self.max_segments:
                raise ValueError(
                    f"template_text.{status}: {empty} characters with every value empty,"
                    f" more than {self.max_segments} segment(s)"
                )
        return self

    def message(self, status: Literal["firing", "resolved"], values: dict[str, str]) -> str:
        """The whole SMS as the phone shows it: signature and ``template_text[status]``
        with ``values`` in place of its ``${name}`` placeholders."""
        text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), self.template_text[status])
        return f"【{self.sign_name}】{text}" if self.sign_name else text


def _worst(n: Notification) -> AlertEvent:
    if n.status == "firing":
        firing = [a for a in n.alerts if n.is_firing(a)] or list(n.alerts)
        return max(firing, key=lambda a: (Level.parse(n.shown_level(a)), -a.started_at))
    return max(n.alerts, key=lambda a: Level.parse(a.previous_level))


def _source(name: str, n: Notification, worst: AlertEvent, config: SmsConfig) -> str:
    if name.startswith("label:"):
        label = name.removeprefix("label:")
        return n.group_labels.get(label) or worst.labels.get(label, "")
    if name == "level":
        return level_name(n.level if n.status == "firing" else "none", config.lang)
    if name == "since":
        return datetime.fromtimestamp(worst.started_at / 1000, config.tz).strftime("%m-%d %H:%M")
    values = {
        "where": lambda: where(n),
        "count": lambda: str(len(n.alerts)),
        "station": lambda: worst.station,
        "summary": lambda: worst.summary,
        "value": lambda: f"{worst.value:g}",
        "threshold": lambda: f"{worst.threshold:g}",
        "line": lambda: render_line(n, config.lang),
        "link": lambda: n.links.get(worst.fingerprint, ""),
    }
    return values[name]()


def _cut(value: str, chars: int) -> str:
    return value if len(value) <= chars else value[: max(chars - 1, 0)] + "…"


def fill_params(n: Notification, config: SmsConfig) -> dict[str, str]:
    """The template variables for ``n``, each cut to ``max_param_chars``, then the
    longest shortened until the message fits ``max_segments`` (with ``template_text``)."""
    worst = _worst(n)
    values = {
        name: _cut(_source(source, n, worst, config), config.max_param_chars)
        for name, source in config.params.items()
    }
    if n.status in config.template_text:
        while segments(len(config.message(n.status, values))) > config.max_segments:
            longest = max(values, key=lambda k: len(values[k]))
            values[longest] = _cut(values[longest], len(values[longest]) - 1)
    return values


class SmsReceiver:
    """``send`` posts the template request for each batch of recipients; a batch the
    provider confirmed is not sent again by a retry in this process."""

    def __init__(self, name: str, config: SmsConfig, *, sleep: Sleep = asyncio.sleep) -> None:
        self.name = name
        self.config = config
        self._url = url_of(name, config.url, config.url_env)
        self._token: SecretStr | None = (
            secret_from_env(name, "token_env", config.token_env) if config.token_env else None
        )
        self._sleep = sleep
        self._client = httpx.AsyncClient(timeout=config.timeout_s, follow_redirects=False)
        self._confirmed: OrderedDict[str, None] = OrderedDict()  # "<key>#<batch>", bounded

    def requests(self, n: Notification) -> list[tuple[str, dict[str, Any]]]:
        """(out-id, JSON body) per batch of recipients, in order."""
        c, f = self.config, self.config.fields
        values = fill_params(n, c)
        params: Any = values
        if c.params_as == "json_string":
            params = json.dumps(values, ensure_ascii=False, separators=(",", ":"))
        elif c.params_as == "list":
            params = [values[name] for name in c.params]
        phones = c.recipients
        batches = [phones[i : i + c.batch_size] for i in range(0, len(phones), c.batch_size)]
        out = []
        for i, batch in enumerate(batches):
            out_id = n.key if len(batches) == 1 else f"{n.key}#{i}"
            body: dict[str, Any] = {
                f.phones: list(batch) if c.phones_as == "list" else ",".join(batch),
                f.template: c.templates[n.status],
                f.params: params,
            }
            if f.sign and c.sign_name:
                body[f.sign] = c.sign_name
            if f.key:
                body[f.key] = out_id
            out.append((out_id, body))
        return out

    async def send(self, n: Notification) -> None:
        for out_id, body in self.requests(n):
            if out_id in self._confirmed:
                continue

            async def attempt(out_id: str = out_id, body: dict[str, Any] = body) -> None:
                await self._post(out_id, body)

            await with_retries(self.name, attempt, self.config.retry, self._sleep)
            self._confirmed[out_id] = None
            while len(self._confirmed) > 10_000:
                self._confirmed.popitem(last=False)

    async def _post(self, out_id: str, body: dict[str, Any]) -> None:
        headers = {"Idempotency-Key": out_id}
        if self._token is not None:
            headers[self.config.token_header] = (
                self.config.token_prefix + self._token.get_secret_value()
            )
        try:
            response = await self._client.post(self._url, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise DeliveryError(self.name, f"{type(exc).__name__}: {exc}", retryable=True) from exc
        status = response.status_code
        if not 200 <= status < 300:
            retryable = status >= 500 or status in _RETRYABLE_STATUS
            raise DeliveryError(
                self.name, f"HTTP {status}: {response.text[:200]!r}", retryable=retryable
            )
        field = self.config.success_field
        if field is None:
            return
        try:
            answer: Any = response.json()
            for part in field.split("."):
                answer = answer[part]
        except (ValueError, KeyError, TypeError, IndexError):
            answer = None
        if answer != self.config.success_value:
            raise DeliveryError(
                self.name,
                f"provider refused ({field} = {answer!r}): {response.text[:200]!r}",
                retryable=answer in self.config.retry_values,
            )

    async def aclose(self) -> None:
        await self._client.aclose()

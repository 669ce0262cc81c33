"""``build_receiver(name, mapping)``: a receiver from its config, in one place.

The mapping's ``type`` picks the receiver: ``webhook`` (with ``template`` vigil, wecom or
dingtalk), ``email``, ``sms`` or ``mqtt``. It is validated into that receiver's frozen
config; every problem is reported at once as ``receiver 'NAME': FIELD: message``.
Secrets are read from the environment variables the config names, here, so that a
missing one fails at start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from connectors.sinks.common import ReceiverConfigError, Sleep
from connectors.sinks.email import EmailConfig, EmailReceiver
from connectors.sinks.mqtt_broadcast import MqttBroadcastConfig, MqttBroadcastReceiver
from connectors.sinks.sms import SmsConfig, SmsReceiver
from connectors.sinks.webhook import WebhookConfig, WebhookReceiver
from engine.contracts.notification import Receiver

__all__ = ["AnyReceiverConfig", "ReceiverConfigError", "build_receiver", "parse_config"]

AnyReceiverConfig = Annotated[
    WebhookConfig | EmailConfig | SmsConfig | MqttBroadcastConfig, Field(discriminator="type")
]
_ADAPTER: TypeAdapter[AnyReceiverConfig] = TypeAdapter(AnyReceiverConfig)
_TYPES = ("webhook", "email", "sms", "mqtt")


def parse_config(name: str, mapping: Mapping[str, Any]) -> AnyReceiverConfig:
    """The validated config; ReceiverConfigError listing every problem."""
    if not isinstance(mapping, Mapping):
        raise ReceiverConfigError(name, [("", f"expected a mapping, got {type(mapping).__name__}")])
    kind = mapping.get("type")
    if kind not in _TYPES:
        raise ReceiverConfigError(
            name, [("type", f"expected one of {', '.join(_TYPES)}, got {kind!r}")]
        )
    try:
        return _ADAPTER.validate_python(dict(mapping))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"][1:])  # [0] is the type
            problems.append((loc, err["msg"].removeprefix("Value error, ")))
        raise ReceiverConfigError(name, problems) from exc


def build_receiver(
    name: str, mapping: Mapping[str, Any], *, sleep: Sleep = asyncio.sleep
) -> Receiver:
    """The receiver ``name`` described by ``mapping``. ``sleep`` is what the retry
    loops wait with (a test passes one that returns at once)."""
    config = parse_config(name, mapping)
    if isinstance(config, WebhookConfig):
        return WebhookReceiver(name, config, sleep=sleep)
    if isinstance(config, EmailConfig):
        return EmailReceiver(name, config, sleep=sleep)
    if isinstance(config, SmsConfig):
        return SmsReceiver(name, config, sleep=sleep)
    return MqttBroadcastReceiver(name, config)

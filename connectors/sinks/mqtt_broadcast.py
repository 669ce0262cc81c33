"""MQTT broadcast receiver: for sirens, LED boards and public warning displays.

Per notification it publishes, at ``qos`` (1 by default), and returns only once the
broker acknowledged every message (PUBACK):

- one message per alert on ``alert_topic`` (``vigil/alerts/{station}``; placeholders
  ``{station}``, ``{rule_id}``, ``{metric}``, ``{level}``, ``{fingerprint}``), not
  retained: ``{"key", "status", "level_name", "line", "ack_url", "alert": {...}}``;
- one RETAINED message per station of the group on ``level_topic``
  (``vigil/level/{station}``): the station's current level, so a display that connects
  later reads it at once: ``{"station", "level", "level_name", "series", "updated_at",
  "key"}``. ``series`` maps each alert series (fingerprint) of the station this
  receiver was told about to ``{"level", "rule_id", "metric", "at"}``; ``level`` is the
  highest of them, ``none`` once all cleared (the all-clear stays retained).

The per-station series survive a restart in the retained messages themselves: at its
first connection the receiver subscribes to ``level_topic``'s wildcard, then publishes a
marker on a private topic it also subscribes to; mosquitto hands a subscriber the
retained messages before anything published after the subscription, so once the marker
comes back the state is read (``seed_timeout_s`` bounds the wait).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any, Literal

import paho.mqtt.client as mqtt
from pydantic import Field, SecretStr, model_validator

from connectors.sinks.common import ReceiverConfig, secret_from_env
from connectors.sinks.render import level_name, render_line
from engine.contracts.alerts import AlertEvent, Level
from engine.contracts.notification import DeliveryError, Notification

__all__ = ["MqttBroadcastConfig", "MqttBroadcastReceiver"]

_ALERT_FIELDS = ("station", "rule_id", "metric", "level", "fingerprint")


class MqttBroadcastConfig(ReceiverConfig):
    type: Literal["mqtt"]
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = Field("vigil-broadcast", min_length=1, max_length=64)
    username: str | None = None
    password_env: str | None = None
    ca_file: str | None = None
    alert_topic: str = "vigil/alerts/{station}"
    level_topic: str = "vigil/level/{station}"
    qos: Literal[1, 2] = 1
    timeout_s: float = Field(10.0, gt=0, le=120)
    seed_timeout_s: float = Field(10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _topics(self) -> MqttBroadcastConfig:
        for field in ("alert_topic", "level_topic"):
            topic = getattr(self, field)
            if "+" in topic or "#" in topic:
                raise ValueError(f"{field}: no wildcards (+, #) in a topic to publish on")
            try:
                topic.format(**dict.fromkeys(_ALERT_FIELDS, "x"))
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{field}: bad placeholder {exc} (use {_ALERT_FIELDS})") from exc
        if self.level_topic.replace("{station}", "") == self.level_topic:
            raise ValueError("level_topic: must contain {station}")
        if "{" in self.level_topic.replace("{station}", ""):
            raise ValueError("level_topic: {station} is its only placeholder")
        return self


def _topic_part(value: str) -> str:
    if not value or any(c in value for c in "/+#\x00"):
        raise ValueError(f"{value!r} cannot be one level of an MQTT topic")
    return value


class MqttBroadcastReceiver:
    """One paho client, connected at the first ``send``; paho reconnects by itself."""

    def __init__(self, name: str, config: MqttBroadcastConfig) -> None:
        self.name = name
        self.config = config
        password: SecretStr | None = (
            secret_from_env(name, "password_env", config.password_env)
            if config.password_env
            else None
        )
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=True,  # it only publishes; the seed subscription is one-off
            protocol=mqtt.MQTTv311,
        )
        if config.username is not None:
            self._client.username_pw_set(
                config.username, password.get_secret_value() if password else None
            )
        if config.ca_file is not None:
            self._client.tls_set(ca_certs=config.ca_file)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._connected = threading.Event()
        self._seeded = threading.Event()
        self._refused: str | None = None
        self._started = False
        self._marker = uuid.uuid4().hex
        self._sync_topic = f"vigil-sync/{config.client_id}/{self._marker}"
        self._wildcard = config.level_topic.replace("{station}", "+")
        self._prefix, self._suffix = config.level_topic.split("{station}")
        #: station -> fingerprint -> series entry; the retained ``series``
        self._series: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    # --- paho's network thread -------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            self._refused = str(reason_code)
            return
        self._refused = None
        self._connected.set()
        if not self._seeded.is_set():
            client.subscribe([(self._wildcard, 1), (self._sync_topic, 1)])
            client.publish(self._sync_topic, self._marker, qos=1)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self._connected.clear()  # a send waits (up to timeout_s) for paho's reconnect

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        if self._seeded.is_set():
            return  # our own level messages coming back: the state is already ours
        if msg.topic == self._sync_topic:
            client.unsubscribe([self._wildcard, self._sync_topic])
            self._seeded.set()
            return
        station = msg.topic.removeprefix(self._prefix).removesuffix(self._suffix)
        try:
            series = json.loads(msg.payload)["series"]
        except (ValueError, KeyError, TypeError):
            return  # not ours (someone else's retained message): start that station empty
        if isinstance(series, dict):
            with self._lock:
                self._series.setdefault(station, series)

    # --- the event loop ----------------------------------------------------------------
    async def _ready(self) -> None:
        if not self._started:
            self._started = True
            self._client.connect_async(self.config.host, self.config.port, keepalive=30)
            self._client.loop_start()
        ok = await asyncio.to_thread(self._connected.wait, self.config.timeout_s)
        if not ok:
            why = self._refused or "no connection"
            raise DeliveryError(
                self.name,
                f"MQTT broker {self.config.host}:{self.config.port}: {why}",
                retryable=self._refused is None,  # refused: bad credentials or client id
            )
        if not await asyncio.to_thread(self._seeded.wait, self.config.seed_timeout_s):
            raise DeliveryError(
                self.name, "retained station levels not read back in time", retryable=True
            )

    def _alert_message(self, n: Notification, a: AlertEvent) -> tuple[str, bytes]:
        topic = self.config.alert_topic.format(
            **{f: _topic_part(str(getattr(a, f))) for f in _ALERT_FIELDS}
        )
        payload = {
            "key": n.key,
            "status": n.status,
            "level_name": level_name(n.shown_level(a), self.config.lang),
            "line": render_line(n, self.config.lang),
            "ack_url": n.links.get(a.fingerprint),
            "latched": n.latched.get(a.fingerprint),
            "alert": a.to_dict(),
        }
        return topic, json.dumps(payload, ensure_ascii=False).encode()

    def _level_message(self, n: Notification, station: str) -> tuple[str, bytes]:
        with self._lock:
            series = self._series.setdefault(station, {})
            for a in n.alerts:
                if a.station != station:
                    continue
                old = series.get(a.fingerprint)
                if old is not None and old["at"] > a.at:
                    continue  # an older transition, sent again: keep the newer one
                if n.is_firing(a):  # a latched alert stays on the board until acknowledged
                    entry = {"level": n.shown_level(a), "rule_id": a.rule_id, "metric": a.metric}
                    series[a.fingerprint] = {**entry, "at": a.at}
                else:
                    series.pop(a.fingerprint, None)
            top = max((Level.parse(s["level"]) for s in series.values()), default=Level.NONE)
            payload = {
                "station": station,
                "level": top.label,
                "level_name": level_name(top.label, self.config.lang),
                "series": dict(series),
                "updated_at": n.created_at,
                "key": n.key,
            }
        topic = self.config.level_topic.format(station=_topic_part(station))
        return topic, json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()

    async def send(self, n: Notification) -> None:
        try:
            messages = [(*self._alert_message(n, a), False) for a in n.alerts]
            stations = sorted({a.station for a in n.alerts})
        except ValueError as exc:
            raise DeliveryError(self.name, str(exc), retryable=False) from exc
        await self._ready()
        try:
            messages += [(*self._level_message(n, s), True) for s in stations]
        except ValueError as exc:
            raise DeliveryError(self.name, str(exc), retryable=False) from exc
        infos = [
            self._client.publish(topic, payload, qos=self.config.qos, retain=retain)
            for topic, payload, retain in messages
        ]
        timeout = self.config.timeout_s
        for info in infos:
            try:
                await asyncio.to_thread(info.wait_for_publish, timeout)
            except (RuntimeError, ValueError) as exc:  # not connected, queue full
                raise DeliveryError(self.name, f"publish failed: {exc}", retryable=True) from exc
            if not info.is_published():
                raise DeliveryError(self.name, f"no PUBACK within {timeout}s", retryable=True)

    async def aclose(self) -> None:
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False

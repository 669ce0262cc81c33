"""The broker's dropped-message count, followed on a connection of its own.

mosquitto publishes, in its ``$SYS`` tree, how many messages it dropped
(``MqttOptions.broker_drops_topic``). ``DropWatcher`` subscribes to it with a second,
clean-session client and hands each count to ``on_total`` (on paho's thread): its own
connection, so that the news of drops is not queued behind (and dropped with) the
readings it is about; clean session, because the count is retained and a count missed
while away is published again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import paho.mqtt.client as mqtt

from connectors.mqtt.connection import new_client
from connectors.mqtt.options import MqttOptions

__all__ = ["DropWatcher"]

log = logging.getLogger("connectors.mqtt.client")


class DropWatcher:
    """``client``: the watcher's paho client, connected by its owner."""

    def __init__(self, options: MqttOptions, on_total: Callable[[int], None]) -> None:
        assert options.broker_drops_topic is not None
        self.topic = options.broker_drops_topic
        self.on_total = on_total
        self.client = new_client(options, f"{options.client_id}-sys", clean_session=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if not reason_code.is_failure:
            client.subscribe(self.topic, qos=0)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        if any(rc.is_failure for rc in reason_codes):
            log.error(
                "MQTT subscription to %s refused (%s): messages the broker drops will go unnoticed",
                self.topic,
                reason_codes,
            )

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:  # type: ignore[no-untyped-def]
        try:
            total = int(msg.payload)
        except ValueError:
            log.warning("broker drop count %r on %s is not a number", msg.payload, msg.topic)
            return
        self.on_total(total)

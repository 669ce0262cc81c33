"""Publishes readings to an MQTT broker at QoS 1, paced against the wall clock."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable

import paho.mqtt.client as mqtt

from connectors.mqtt.topics import TopicTemplate

__all__ = ["Publisher"]


class Publisher:
    """A paho client that publishes JSON readings ``{"value": v, "ts": ms}``."""

    def __init__(
        self,
        host: str,
        port: int,
        template: str = "vigil/{station}/{metric}",
        client_id: str = "vigil-simulator",
    ) -> None:
        self.template = TopicTemplate(template)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        self.client.connect(host, port)
        self.client.loop_start()
        self.published = 0

    def publish_raw(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)

    def publish(
        self,
        readings: Iterable[tuple[str, str, int, float]],
        duration_s: float = 0.0,
        total: int | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """Publish all ``readings``; spread over ``duration_s`` when ``total`` is given."""
        interval = duration_s / total if total and duration_s > 0 else 0.0
        start = time.monotonic()
        last = None
        for i, (station, metric, ts, value) in enumerate(readings):
            if stop is not None and stop.is_set():
                break
            if interval:
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            payload = json.dumps({"value": value, "ts": ts}).encode()
            last = self.client.publish(self.template.topic(station, metric), payload, qos=1)
            self.published += 1
        if last is not None:
            last.wait_for_publish(timeout=30)
        return self.published

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

"""The MQTT broadcast receiver against a real mosquitto: a message per alert, and a
retained current level per station that a display connecting afterwards reads."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from connectors.mqtt.mosquitto import Mosquitto, free_port
from connectors.sinks.receivers import build_receiver
from engine.contracts.alerts import Level
from engine.contracts.notification import DeliveryError, Notification
from tests.notifications import T0, alert, all_clear, flood


class Subscriber:
    """A plain paho client that records (topic, payload, retain) of what it receives."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._cond = threading.Condition()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex)
        subscribed = threading.Event()
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        assert subscribed.wait(10), "subscriber did not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait(self, done: Callable[[list[tuple[str, dict[str, Any], bool]]], bool]) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: done(self.messages), 15), self.messages

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as b:
        yield b


def _config(broker: Mosquitto, **kw: object) -> dict[str, object]:
    return {"type": "mqtt", "host": broker.host, "port": broker.port, **kw}


def _send(config: dict[str, object], *notifications: Notification) -> None:
    async def run() -> None:
        receiver = build_receiver("boards", config)
        try:
            for n in notifications:
                await receiver.send(n)
        finally:
            await receiver.aclose()

    asyncio.run(run())


def _levels(broker: Mosquitto, stations: set[str]) -> dict[str, dict[str, Any]]:
    """The retained level of each station, as a display connecting now reads it."""
    sub = Subscriber(broker, "vigil/level/+")
    try:
        sub.wait(lambda ms: {t.rsplit("/", 1)[1] for t, _, _ in ms} >= stations)
        assert all(retain for _, _, retain in sub.messages)
        return {t.rsplit("/", 1)[1]: p for t, p, _ in sub.messages}
    finally:
        sub.close()


def test_a_message_per_alert_and_a_retained_level_per_station(broker: Mosquitto) -> None:
    live = Subscriber(broker, "vigil/alerts/#")
    n = flood(key="outbox-3")
    _send(_config(broker), n)

    live.wait(lambda ms: len(ms) == 3)
    live.close()
    by_station = {t: p for t, p, _ in live.messages}
    assert set(by_station) == {"vigil/alerts/HZ002", "vigil/alerts/HZ001", "vigil/alerts/HZ003"}
    red = by_station["vigil/alerts/HZ002"]
    assert red["key"] == "outbox-3"
    assert red["level_name"] == "红色预警"
    assert red["alert"] == n.alerts[0].to_dict()
    assert red["ack_url"] == "https://vigil.example/ack/abc?sig=1"

    levels = _levels(broker, {"HZ001", "HZ002", "HZ003"})  # after the fact: retained
    assert {s: p["level"] for s, p in levels.items()} == {
        "HZ002": "red",
        "HZ001": "orange",
        "HZ003": "none",
    }
    assert levels["HZ002"]["level_name"] == "红色预警"
    assert levels["HZ003"]["level_name"] == "解除"
    assert levels["HZ002"]["series"] == {
        n.alerts[0].fingerprint: {
            "level": "red",
            "rule_id": "flood_levels",
            "metric": "water_level",
            "at": n.alerts[0].at,
        }
    }


def test_a_station_keeps_its_highest_series_across_a_restart(broker: Mosquitto) -> None:
    _send(_config(broker), flood())  # HZ002 red on the level rule
    # A new receiver (a restarted gateway): HZ002's rate-of-rise series fires and clears.
    rise = alert("HZ002", Level.YELLOW, rule_id="flood_rise", at=T0 + 4_000_000)
    cleared = alert("HZ002", Level.NONE, Level.YELLOW, rule_id="flood_rise", at=T0 + 5_000_000)
    _send(
        _config(broker),
        Notification("k2", "boards", "firing", "yellow", {}, (rise,), {}, T0 + 4_000_100),
        Notification("k3", "boards", "resolved", "none", {}, (cleared,), {}, T0 + 5_000_100),
    )
    assert _levels(broker, {"HZ002"})["HZ002"]["level"] == "red"  # the level rule still is

    _send(_config(broker), all_clear())  # HZ002's level series clears too
    assert _levels(broker, {"HZ002"})["HZ002"]["level"] == "none"


def test_topic_templates_are_configurable(broker: Mosquitto) -> None:
    config = _config(
        broker,
        alert_topic="flood/{rule_id}/{station}/{level}",
        level_topic="boards/{station}/level",
    )
    live = Subscriber(broker, "flood/#")
    _send(config, flood())
    live.wait(lambda ms: len(ms) == 3)
    live.close()
    assert {t for t, _, _ in live.messages} == {
        "flood/flood_levels/HZ002/red",
        "flood/flood_levels/HZ001/orange",
        "flood/flood_levels/HZ003/none",
    }
    sub = Subscriber(broker, "boards/+/level")
    sub.wait(lambda ms: len(ms) == 3)
    sub.close()


def test_no_broker_is_a_retryable_error() -> None:
    config = {"type": "mqtt", "host": "127.0.0.1", "port": free_port(), "timeout_s": 0.5}
    with pytest.raises(DeliveryError) as err:
        _send(config, flood())
    assert err.value.retryable is True
    assert str(err.value).endswith(": no connection")

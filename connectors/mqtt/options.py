"""MQTT connection settings, as the gateway's configuration builds them (no client here:
``engine.runtime.config_sections`` imports this without paho)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

__all__ = ["MqttOptions"]


@dataclass(frozen=True)
class MqttOptions:
    """Connection settings; the password comes from configuration, never the repo, and
    never shows in a repr or a log line (``***`` stands for it)."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "vigil-gateway"
    topic_template: str = "vigil/{station}/{metric}"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    max_readings: int = 5000  # per produced batch
    linger_ms: int = 50  # how long to wait for more messages before producing
    #: A payload longer than this (bytes) is dead-lettered undecoded, cut short.
    max_payload_bytes: int | None = None
    #: The broker's cumulative dropped-message count (mosquitto's ``$SYS`` tree, which
    #: needs ``sys_interval`` > 0); None for a broker that has none.
    broker_drops_topic: str | None = "$SYS/broker/publish/messages/dropped"
    #: How many ingest processes share the subscription (``connectors.mqtt.pool``);
    #: 1: the gateway's own process subscribes, as before.
    processes: int = 1
    #: The shared-subscription group (``$share/<group>/...``) this client is a member
    #: of; None: a plain subscription. Set by the pool on its workers.
    share_group: str | None = None
    #: A topic of this client's own (subscribed without sharing) on which it marks, at
    #: its start, where the backlog its persistent session held ends
    #: (``MqttIngest.catching_up``); None: no mark. Set by the pool on its workers.
    catch_up_topic: str | None = None
    #: This client id is a worker's no longer configured (``processes`` lowered): take
    #: what its session holds, leave the shared subscription and end the session
    #: (``MqttIngest.retired``). Needs ``catch_up_topic``. Set by the pool.
    retire: bool = False
    #: Speak MQTT 5 (a session that never expires, in place of MQTT 3.1.1's persistent
    #: session): for a broker that takes shared subscriptions only from MQTT 5 clients.
    #: paho builds a ``Properties`` object for every MQTT 5 PUBLISH it receives, a
    #: fifth of an ingest worker's CPU (measured: bench/MQTT_RESULTS.md), hence 3.1.1.
    mqtt5: bool = False

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
        return f"MqttOptions({shown}, password={None if self.password is None else '***'})"

"""MQTT ingest: a paho-mqtt 2.x subscriber at QoS 1 that produces telemetry batches.

Contract with the broker: a QoS 1 message is acknowledged (PUBACK) only after its
readings, or its dead-letter record, are durably in the log (``manual_ack``), and the
session is persistent (``clean_session=False``, fixed client id). A crash before the ack
means the broker redelivers; the kernels skip a reading they have already counted (same
sensor, timestamp not after the last one), so redelivery never double-counts. A QoS 0
message has no packet id and is never acknowledged (a PUBACK for it is a protocol error
that makes the broker drop the connection); it is taken like any other, but the device
chose at most once: what a crash loses of it, no one redelivers.

Every message becomes readings or a dead letter: whatever goes wrong with one message
(``decode_payload``'s reasons, or any other exception) dead-letters it with the reason and
its raw bytes, and the stream goes on. ``join`` raises if the ingest task itself fails
(the log cannot be written): its owner must then end the process, never run on without
ingest.

When the broker publishes its dropped-message count (mosquitto's ``$SYS`` tree,
``MqttOptions.broker_drops_topic``), a second, clean-session client follows it and hands
each count to ``on_broker_drops``: its own connection, so that the news of drops is not
queued behind (and dropped with) the readings it is about.

Topic to (station, metric) through a template such as ``vigil/{station}/{metric}``.
Payloads are JSON: ``{"value": 3.21, "ts": 1714000000000}`` (``ts`` in epoch ms, or an
ISO 8601 string with offset; omitted means the time the gateway received it), or a list
of such objects. Anything else goes to dead-letter with the reason; the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import reprlib
import ssl
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime

import paho.mqtt.client as mqtt

__all__ = ["MqttIngest", "MqttOptions", "PayloadError", "TopicTemplate", "decode_payload"]

log = logging.getLogger(__name__)

#: ``produce(readings)`` / ``dead_letter(raw, reason, source)``: both resolve only once
#: the records are durable. Readings are (station, metric, ts_ms, value).
Produce = Callable[[list[tuple[str, str, int, float]]], Awaitable[None]]
DeadLetter = Callable[[bytes, str, str], Awaitable[None]]
#: ``on_broker_drops(total)``: the broker's cumulative count of dropped messages.
BrokerDrops = Callable[[int], Awaitable[None]]

#: Epoch-ms bounds of a ``ts``: the years 1 to 9999 (what ISO 8601 can write). Beyond
#: them a number is no clock reading, and inside them event-time arithmetic (windows,
#: lateness) stays far from int64 overflow.
MIN_TS_MS = -62_135_596_800_000
MAX_TS_MS = 253_402_300_799_999


class PayloadError(ValueError):
    """A message that cannot become readings; the text is the dead-letter reason."""


class TopicTemplate:
    """``vigil/{station}/{metric}`` <-> topic names and the subscription filter."""

    def __init__(self, template: str) -> None:
        names = re.findall(r"{(\w+)}", template)
        if sorted(names) != ["metric", "station"]:
            raise ValueError(
                f"topic template {template!r} must contain {{station}} and {{metric}} once each"
            )
        pattern = re.escape(template)
        for name in names:
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>[^/+#]+)")
        self.template = template
        self._regex = re.compile(f"^{pattern}$")
        self.subscription = re.sub(r"{\w+}", "+", template)

    def parse(self, topic: str) -> tuple[str, str]:
        m = self._regex.match(topic)
        if m is None:
            raise PayloadError(f"topic {topic!r} does not match template {self.template!r}")
        return m["station"], m["metric"]

    def topic(self, station: str, metric: str) -> str:
        return self.template.format(station=station, metric=metric)


def _show(x: object) -> str:
    """A bounded repr for reasons: a 401-digit number or a deep list stays short."""
    return reprlib.repr(x)


def _parse_ts(raw: object, received_ms: int) -> int:
    if raw is None:
        return received_ms
    if isinstance(raw, bool):
        raise PayloadError(f"ts must be epoch ms or ISO 8601, got {raw!r}")
    if isinstance(raw, int | float):
        if isinstance(raw, float) and not math.isfinite(raw):
            raise PayloadError(f"ts must be finite, got {raw!r}")
        ms = raw
    elif isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError as exc:
            raise PayloadError(f"ts {_show(raw)} is not ISO 8601") from exc
        if parsed.tzinfo is None:
            raise PayloadError(f"ts {_show(raw)} has no UTC offset")
        ms = parsed.timestamp() * 1000
    else:
        raise PayloadError(f"ts must be epoch ms or ISO 8601, got {type(raw).__name__}")
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise PayloadError(f"ts {_show(raw)} is out of range (epoch ms of the years 1 to 9999)")
    return int(ms)


def _parse_value(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise PayloadError(f"value must be a number, got {_show(raw)}")
    try:
        value = float(raw)
    except OverflowError as exc:  # a JSON integer has any number of digits
        raise PayloadError(f"value {_show(raw)} is out of range for a float") from exc
    if not math.isfinite(value):
        raise PayloadError(f"value must be finite, got {_show(raw)}")
    return value


def decode_payload(payload: bytes, received_ms: int) -> list[tuple[int, float]]:
    """JSON payload -> [(ts_ms, value)]; raises PayloadError with the reason, never
    anything else, whatever the bytes."""
    try:
        doc = json.loads(payload)
    except ValueError as exc:  # not UTF-8, not JSON, or an integer past 4300 digits
        raise PayloadError(f"payload is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise PayloadError("payload is not JSON this decoder can read: nested too deeply") from exc
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise PayloadError("payload is an empty list")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise PayloadError(f"expected an object with 'value', got {type(item).__name__}")
        if "value" not in item:
            raise PayloadError("object has no 'value'")
        value = _parse_value(item["value"])
        out.append((_parse_ts(item.get("ts"), received_ms), value))
    return out


@dataclass(frozen=True)
class MqttOptions:
    """Connection settings; the password comes from configuration, never the repo."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "vigil-gateway"
    topic_template: str = "vigil/{station}/{metric}"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    max_readings: int = 5000  # per produced batch
    linger_ms: int = 50  # how long to wait for more messages before producing
    #: The broker's cumulative dropped-message count (mosquitto's ``$SYS`` tree, which
    #: needs ``sys_interval`` > 0); None for a broker that has none.
    broker_drops_topic: str | None = "$SYS/broker/publish/messages/dropped"


@dataclass
class _Message:
    mid: int
    qos: int
    topic: str
    payload: bytes
    received_ms: int


@dataclass
class _DropCount:
    total: int


class MqttIngest:
    """Subscribes, decodes, micro-batches, produces durably, then acknowledges."""

    def __init__(
        self,
        options: MqttOptions,
        produce: Produce,
        dead_letter: DeadLetter,
        known_stations: Collection[str] | None = None,
        on_broker_drops: BrokerDrops | None = None,
    ) -> None:
        self.options = options
        self.template = TopicTemplate(options.topic_template)
        self._produce = produce
        self._dead_letter = dead_letter
        self._on_broker_drops = on_broker_drops
        #: Station ids accepted; others go to dead-letter. Replaced on hot reload.
        self.known_stations = known_stations
        self.counters: Counter[str] = Counter()
        self.subscribed = threading.Event()
        self._queue: asyncio.Queue[_Message | _DropCount] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._client = self._new_client(options.client_id, clean_session=False)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._sys_client: mqtt.Client | None = None
        if options.broker_drops_topic is not None and on_broker_drops is not None:
            # Clean session: a count missed while away is published again (retained).
            self._sys_client = self._new_client(f"{options.client_id}-sys", clean_session=True)
            self._sys_client.on_connect = self._on_sys_connect
            self._sys_client.on_subscribe = self._on_sys_subscribe
            self._sys_client.on_message = self._on_sys_message

    def _new_client(self, client_id: str, *, clean_session: bool) -> mqtt.Client:
        o = self.options
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,  # persistent: the broker keeps what we did not ack
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if o.username is not None:
            client.username_pw_set(o.username, o.password)
        if o.ca_file is not None:
            client.tls_set(
                ca_certs=o.ca_file,
                certfile=o.cert_file,
                keyfile=o.key_file,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        return client

    # ---- paho callbacks (paho's network thread; an exception here would end it) ---------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.error(
                "MQTT connect to %s:%s refused: %s",
                self.options.host,
                self.options.port,
                reason_code,
            )
            return
        client.subscribe(self.template.subscription, qos=1)
        log.info("MQTT connected to %s:%s", self.options.host, self.options.port)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        if any(rc.is_failure for rc in reason_codes):
            log.error(
                "MQTT subscription to %s refused: %s", self.template.subscription, reason_codes
            )
            return
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.subscribed.clear()
        if reason_code != 0:
            log.warning("MQTT disconnected (%s); paho reconnects", reason_code)

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # brokers check topics are UTF-8; keep the bytes anyway
            topic = msg._topic.decode("utf-8", "backslashreplace")
        item = _Message(msg.mid, msg.qos, topic, bytes(msg.payload), int(time.time() * 1000))
        self._enqueue(item)

    def _on_sys_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if not reason_code.is_failure:
            client.subscribe(self.options.broker_drops_topic, qos=0)

    def _on_sys_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        if any(rc.is_failure for rc in reason_codes):
            log.error(
                "MQTT subscription to %s refused (%s): messages the broker drops will go unnoticed",
                self.options.broker_drops_topic,
                reason_codes,
            )

    def _on_sys_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        try:
            total = int(msg.payload)
        except ValueError:
            log.warning("broker drop count %r on %s is not a number", msg.payload, msg.topic)
            return
        self._enqueue(_DropCount(total))

    def _enqueue(self, item: _Message | _DropCount) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: shutting down, the broker redelivers
            log.info("MQTT message after shutdown left to the broker")

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.ensure_future(self._run())
        o = self.options
        for client in (self._client, self._sys_client):
            if client is not None:
                client.connect_async(o.host, o.port, o.keepalive)
                client.loop_start()

    async def join(self) -> None:
        """Wait for the ingest task: raises what made it fail, CancelledError once stopped.

        Shielded: cancelling the caller leaves the task to ``stop``, which ends it only
        after the broker connection is closed.
        """
        assert self._task is not None, "join() before start()"
        await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stop taking messages; what was produced is acknowledged, the rest redelivered."""
        for client in (self._client, self._sys_client):
            if client is not None:
                client.disconnect()
                client.loop_stop()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                # Raised to ``join``'s caller already; raised again here it would cut
                # short the shutdown of everything stopped after the ingest.
                log.warning("MQTT ingest had failed: %r", exc)

    # ---- batching ------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            # asyncio.timeout, not wait_for: in Python 3.11 a wait_for whose get completes
            # as the task is cancelled swallows the cancellation, and ``stop`` hung.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(loop.time() + self.options.linger_ms / 1000):
                    while len(batch) < self.options.max_readings:
                        batch.append(await self._queue.get())
            await self._handle(batch)

    def _decode(self, m: _Message) -> list[tuple[str, str, int, float]]:
        station, metric = self.template.parse(m.topic)
        known = self.known_stations
        if known is not None and station not in known:
            raise PayloadError(f"unknown station {station!r}")
        return [(station, metric, ts, v) for ts, v in decode_payload(m.payload, m.received_ms)]

    async def _handle(self, items: list[_Message | _DropCount]) -> None:
        messages = [m for m in items if isinstance(m, _Message)]
        readings: list[tuple[str, str, int, float]] = []
        dead: list[tuple[bytes, str, str]] = []
        for m in messages:
            self.counters["received"] += 1
            if m.qos == 0:
                self.counters["qos0"] += 1
            try:
                readings.extend(self._decode(m))
            except PayloadError as exc:
                dead.append((m.payload, str(exc), m.topic))
            except Exception as exc:  # a case decode missed: this message, not the stream
                log.exception("ingest: unexpected error on a message from %s", m.topic)
                dead.append((m.payload, f"ingest error: {type(exc).__name__}: {exc}", m.topic))
        # Durable first (produce awaits the fsync), acknowledge after.
        if readings:
            await self._produce(readings)
        for raw, reason, source in dead:
            await self._dead_letter(raw, reason, source)
            self.counters["dead_letter"] += 1
        self.counters["readings"] += len(readings)
        for m in messages:
            if m.qos > 0:  # QoS 0 has no packet id: a PUBACK for it breaks the session
                self._client.ack(m.mid, m.qos)
        drops = [d.total for d in items if isinstance(d, _DropCount)]
        if drops and self._on_broker_drops is not None:
            await self._on_broker_drops(drops[-1])

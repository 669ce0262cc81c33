"""MQTT ingest: a paho-mqtt 2.x subscriber at QoS 1 that produces telemetry batches.

Contract with the broker: a message is acknowledged (PUBACK) only after its readings,
or its dead-letter record, are durably in the log (``manual_ack``), and the session is
persistent (``clean_session=False``, fixed client id). A crash before the ack means the
broker redelivers; the kernels skip a reading they have already counted (same sensor,
timestamp not after the last one), so redelivery never double-counts.

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


def _parse_ts(raw: object, received_ms: int) -> int:
    if raw is None:
        return received_ms
    if isinstance(raw, bool):
        raise PayloadError(f"ts must be epoch ms or ISO 8601, got {raw!r}")
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            raise PayloadError(f"ts must be finite, got {raw!r}")
        return int(raw)
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError as exc:
            raise PayloadError(f"ts {raw!r} is not ISO 8601") from exc
        if parsed.tzinfo is None:
            raise PayloadError(f"ts {raw!r} has no UTC offset")
        return int(parsed.timestamp() * 1000)
    raise PayloadError(f"ts must be epoch ms or ISO 8601, got {type(raw).__name__}")


def decode_payload(payload: bytes, received_ms: int) -> list[tuple[int, float]]:
    """JSON payload -> [(ts_ms, value)]; raises PayloadError with the reason."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"payload is not JSON: {exc}") from exc
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise PayloadError("payload is an empty list")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise PayloadError(f"expected an object with 'value', got {type(item).__name__}")
        if "value" not in item:
            raise PayloadError("object has no 'value'")
        value = item["value"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PayloadError(f"value must be a number, got {value!r}")
        if not math.isfinite(value):
            raise PayloadError(f"value must be finite, got {value!r}")
        out.append((_parse_ts(item.get("ts"), received_ms), float(value)))
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


@dataclass
class _Message:
    mid: int
    topic: str
    payload: bytes
    received_ms: int


class MqttIngest:
    """Subscribes, decodes, micro-batches, produces durably, then acknowledges."""

    def __init__(
        self,
        options: MqttOptions,
        produce: Produce,
        dead_letter: DeadLetter,
        known_stations: Collection[str] | None = None,
    ) -> None:
        self.options = options
        self.template = TopicTemplate(options.topic_template)
        self._produce = produce
        self._dead_letter = dead_letter
        #: Station ids accepted; others go to dead-letter. Replaced on hot reload.
        self.known_stations = known_stations
        self.counters: Counter[str] = Counter()
        self.subscribed = threading.Event()
        self._queue: asyncio.Queue[_Message] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._client = self._new_client()

    def _new_client(self) -> mqtt.Client:
        o = self.options
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=o.client_id,
            clean_session=False,  # persistent session: the broker keeps what we did not ack
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
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        return client

    # ---- paho callbacks (paho's network thread) -----------------------------------------

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
        item = _Message(msg.mid, msg.topic, bytes(msg.payload), int(time.time() * 1000))
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.ensure_future(self._run())
        self._client.connect_async(self.options.host, self.options.port, self.options.keepalive)
        self._client.loop_start()

    async def stop(self) -> None:
        """Stop taking messages; what was produced is acknowledged, the rest redelivered."""
        self._client.disconnect()
        self._client.loop_stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ---- batching ------------------------------------------------------------------------

    async def _run(self) -> None:
        linger = self.options.linger_ms / 1000
        while True:
            batch = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + linger
            while len(batch) < self.options.max_readings:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            await self._handle(batch)

    async def _handle(self, messages: list[_Message]) -> None:
        readings: list[tuple[str, str, int, float]] = []
        dead: list[tuple[bytes, str, str]] = []
        for m in messages:
            self.counters["received"] += 1
            try:
                station, metric = self.template.parse(m.topic)
                known = self.known_stations
                if known is not None and station not in known:
                    raise PayloadError(f"unknown station {station!r}")
                values = decode_payload(m.payload, m.received_ms)
            except PayloadError as exc:
                dead.append((m.payload, str(exc), m.topic))
                continue
            readings.extend((station, metric, ts, v) for ts, v in values)
        # Durable first (produce awaits the fsync), acknowledge after.
        if readings:
            await self._produce(readings)
        for raw, reason, source in dead:
            await self._dead_letter(raw, reason, source)
            self.counters["dead_letter"] += 1
        self.counters["readings"] += len(readings)
        for m in messages:
            self._client.ack(m.mid, 1)

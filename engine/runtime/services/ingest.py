"""``vigil ingest mqtt``: MQTT in, telemetry batches out to Kafka, nothing else.

The same ``MqttIngest`` as the gateway, with ``produce`` and ``dead_letter`` going to
Kafka (``engine.runtime.kafka.producer``): an MQTT message is acknowledged only after the broker
acknowledged its batch with ``acks=all``. Several ingest processes may run side by side
with distinct ``mqtt.client_id`` values. SIGTERM or SIGINT: disconnect from MQTT (the
broker redelivers what was not acknowledged), flush, exit 0. If the ingest task fails
(Kafka unwritable), ``serve_mqtt_ingest`` raises it after the same shutdown: the process
ends with its traceback and a non-zero status, for a supervisor to restart it. Messages
the MQTT broker reports dropped are logged as errors (the gateway also alerts on them).
With ``web_port`` it serves ``/metrics``, ``/healthz`` and ``/readyz``
(``engine.runtime.services.ingest_web``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from connectors.ingest import Reading
from connectors.mqtt.client import MqttIngest
from engine.contracts.batch import ReadingBlock
from engine.evaluation.broker_drops import BrokerDropAlerts
from engine.runtime.config import Settings
from engine.runtime.kafka.producer import TelemetryProducer
from engine.runtime.kafka.topics import TopicLayout, bootstrap_of, ensure_topics
from engine.runtime.metrics import IngestMetrics
from engine.runtime.services.ingest_web import IngestWeb
from engine.runtime.services.rules_source import load_rules
from rules.registry import load_registry

__all__ = ["serve_mqtt_ingest"]

log = logging.getLogger(__name__)


async def serve_mqtt_ingest(
    settings: Settings,
    broker: str,
    *,
    replication: int = 1,
    stop: asyncio.Event | None = None,
    web_port: int | None = None,
) -> None:
    """Run MQTT -> Kafka until ``stop`` is set, or SIGTERM/SIGINT when ``stop`` is None;
    ``web_port``: serve the web pages there (0: any free port), None: none."""
    token = settings.web.token()  # ConfigError now, not at the first request
    bootstrap = bootstrap_of(broker)
    layout = TopicLayout(settings.app_id, settings.partitions, replication)
    await ensure_topics(bootstrap, layout)
    _, stations = load_rules(settings)
    kinds = {s.id: str(s.kind) for s in load_registry(settings.stations).stations}
    producer = TelemetryProducer(bootstrap, layout)
    metrics = IngestMetrics()

    async def produce(readings: list[Reading | ReadingBlock]) -> None:
        started = time.perf_counter()
        batches = await producer.produce(readings)
        metrics.append_seconds.labels("mqtt").observe(time.perf_counter() - started)
        metrics.count_readings("mqtt", batches, kinds)

    async def dead_letter(raw: bytes, reason: str, source: str) -> None:
        await producer.send_dead_letter(raw, reason, source)
        metrics.count_dead_letter(reason)

    await producer.start()
    options = settings.mqtt.options(
        settings.batch.max_readings,
        settings.batch.linger_ms,
        settings.storage.max_payload_bytes,
    )
    drops = BrokerDropAlerts(gateway=options.client_id, broker=f"{options.host}:{options.port}")
    ingest = MqttIngest(
        options,
        produce=produce,
        dead_letter=dead_letter,
        known_stations=stations,
        on_broker_drops=drops.observe,
        admission=settings.ingest.admission(),
    )
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    web = IngestWeb(settings, ingest, metrics, token) if web_port is not None else None
    try:
        if web is not None:
            port = await web.start(web_port or 0)
            print(f"vigil: ingest web port {settings.web.bind}:{port}", flush=True)
        await ingest.start()
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, ingest.subscribed.wait, 60.0):
            o = ingest.options
            print(
                f"vigil: ingest subscribed to {ingest.template.subscription} "
                f"on {o.host}:{o.port}, producing to {layout.telemetry}",
                flush=True,
            )
        else:
            log.error("MQTT: not subscribed after 60 s; still retrying")
        stopped = asyncio.ensure_future(stop.wait())
        ingesting = asyncio.ensure_future(ingest.join())
        await asyncio.wait({stopped, ingesting}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if ingesting.done():
            log.critical("MQTT ingest failed: the process stops for a restart")
            ingesting.result()  # raises what ended the ingest
        ingesting.cancel()
    finally:
        await ingest.stop()
        await producer.stop()
        if web is not None:
            await web.stop()
        log.info("ingest stopped: %s %s", dict(ingest.counters), dict(producer.counters))

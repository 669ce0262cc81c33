"""``vigil ingest mqtt --web-port PORT``: the ingest process's own web port.

What the gateway's web port says about ingest (``engine.runtime.services.observe``),
for the process that only ingests:

* ``GET /metrics``: Prometheus text format: ``vigil_readings_received_total``
  (connector, kind), ``vigil_dead_letters_total`` (reason class),
  ``vigil_ingest_append_seconds`` (until Kafka acknowledged the batch, ``acks=all``),
  ``vigil_mqtt_connected`` and the process collector's memory, CPU and files.
* ``GET /healthz``: 200 ``{"status": "alive"}`` while the event loop answers.
* ``GET /readyz`` (and ``GET /``): 200 when MQTT is connected and subscribed, else
  503, the body as the gateway's (``{"ready": ..., "checks": {"ingest": ...}}``).

It binds to ``web.bind`` with ``web.tls``, behind the web port's one access rule
(``engine.runtime.web_access``, ``web.token_env``), as the gateway's does. Port 0 takes
a free one; ``start`` returns the port bound.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.mqtt.client import MqttIngest
from engine.runtime.config import Settings
from engine.runtime.metrics import IngestMetrics
from engine.runtime.services.observe import ingest_check
from engine.runtime.services.observe_metrics import MqttState
from engine.runtime.web_access import protect, server_ssl_context, site_of

__all__ = ["IngestWeb"]


class IngestWeb:
    """The pages above for one ``MqttIngest`` and the ``metrics`` its produce counts."""

    def __init__(
        self, settings: Settings, ingest: MqttIngest, metrics: IngestMetrics, token: str | None
    ) -> None:
        self.settings = settings
        self.ingest = ingest
        self.metrics = metrics
        metrics.registry.register(MqttState(ingest))
        self.app = web.Application()
        protect(self.app, token, site_of(settings))
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/", self._readyz)
        self._runner: web.AppRunner | None = None

    async def start(self, port: int) -> int:
        """Listen on ``web.bind``:``port``; returns the port bound (``port`` or, for 0,
        the one the system chose)."""
        tls = self.settings.web.tls
        ssl_context = (
            None
            if tls is None
            else server_ssl_context(tls.cert_file, tls.key_file, tls.client_ca_file)
        )
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.web.bind, port, ssl_context=ssl_context)
        await site.start()
        address: Any = self._runner.addresses[0]
        return int(address[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def readiness(self) -> dict[str, Any]:
        checks = {"ingest": ingest_check(self.ingest)}
        return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        body = self.readiness()
        return web.json_response(body, status=200 if body["ready"] else 503)

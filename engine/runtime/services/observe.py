"""What an operator sees on the web port: metrics, health, status, dead letters.

``Observer.install`` adds to a topology's Faust web server (``web_port``):

* ``GET /metrics``: Prometheus text format (``engine.runtime.metrics``, plus the states
  read at scrape time: MQTT connection, consumer lag, log size and retention, sink
  failures, active alerts, rules).
* ``GET /healthz``: 200 ``{"status": "alive"}`` while the event loop answers.
* ``GET /readyz`` (and ``GET /``, which Faust answered "OK" whatever the state): 200 when
  every check passes, else 503; the body names each check and why
  (``{"ready": false, "checks": {"ingest": {"ok": false, "detail": "..."}, ...}}``).
  Checks: ingest connected and subscribed, the log takes a durable write, rules
  loaded, telemetry lag within ``web.ready_max_lag_batches``.
* ``GET /vigil/status``: what ``vigil status`` prints.
* ``GET /vigil/dead-letters?start=&since=&reason=&limit=``: a page of the dead-letter
  topic: the embedded log's, or on a Kafka worker the cluster's (read by a consumer that
  lives for the request; 503 when the cluster does not answer in time). The same page
  either way (``engine.runtime.services.dead_letters``).

The server binds to ``web.bind`` (loopback by default; settings refuse another address
without a token or TLS) and speaks HTTPS with ``web.tls``. Who may call it is the web
port's one access rule (``engine.runtime.web_access``), installed here in front of
every route, the dispatcher's and Faust's included. The metrics that are states live
in ``engine.runtime.services.observe_metrics``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web as aioweb
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.mqtt.pool import Ingest
from connectors.nbiot.service import NbiotIngest
from engine.evaluation.sequence_gaps import SequenceGapAlerts
from engine.runtime.config import Settings
from engine.runtime.services.dead_letters import read_dead_letters, read_kafka_dead_letters
from engine.runtime.services.lag import LagMonitor
from engine.runtime.services.observe_metrics import (
    MqttState,
    NbiotState,
    TopologyState,
    rule_count,
)
from engine.runtime.topology import Topology
from engine.runtime.transport.local import Transport as LocalTransport
from engine.runtime.transport.log import DurableLog
from engine.runtime.web_access import protect, server_ssl_context, site_of

__all__ = ["Observer", "ingest_check"]

#: Seconds between samples of the reading counters (``readings_per_s`` spans a minute).
RATE_SAMPLE_S = 5.0


class _Rate:
    """Readings per second over the last minute, from a counter sampled on a timer."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read
        self._samples: deque[tuple[float, int]] = deque(maxlen=int(60 / RATE_SAMPLE_S) + 1)

    def sample(self) -> None:
        self._samples.append((time.monotonic(), self._read()))

    def per_second(self) -> float | None:
        if not self._samples:
            return None
        t0, n0 = self._samples[0]
        dt = time.monotonic() - t0
        return None if dt <= 0 else (self._read() - n0) / dt


class Observer:
    """Health, status and metrics of one topology; ``ingest`` is None on a Kafka worker
    (ingest runs in its own process there), ``nbiot`` the gateway's NB-IoT ingest if it
    runs one, ``reload_errors`` gives the errors of the last rejected rule reload
    (empty when the files on disk are the rules running)."""

    def __init__(
        self,
        topology: Topology,
        settings: Settings,
        *,
        ingest: Ingest | None = None,
        sequences: SequenceGapAlerts | None = None,
        nbiot: NbiotIngest | None = None,
        reload_errors: Callable[[], Sequence[str]] = list,
        token: str | None = None,
    ) -> None:
        self.topology = topology
        self.settings = settings
        self.ingest = ingest
        self.sequences = sequences
        self.reload_errors = reload_errors
        self.token = token
        self.lag = LagMonitor(topology)
        self._lag: dict[str, Any] = {"partitions": {}, "total_lag": 0}
        counters = topology.counters
        self._rate_in = _Rate(lambda: counters["readings_produced"])
        self._rate_evaluated = _Rate(lambda: counters["readings_evaluated"])
        registry = topology.metrics.registry
        if ingest is not None:
            registry.register(MqttState(ingest))
        self.nbiot = None if nbiot is None else NbiotState(nbiot)
        if self.nbiot is not None:
            registry.register(self.nbiot)
        registry.register(
            TopologyState(topology, settings, lambda: self._lag, lambda: self.durable_log)
        )

    # ---- wiring --------------------------------------------------------------------------

    def install(self) -> None:
        """Bind, protect (every route of the port) and add the pages; before the app
        starts."""
        app = self.topology.app
        web_settings = self.settings.web
        app.conf.web_bind = web_settings.bind
        if web_settings.tls is not None:
            tls = web_settings.tls
            app.conf.web_ssl_context = server_ssl_context(
                tls.cert_file, tls.key_file, tls.client_ca_file
            )
        protect(app.web.web_app, self.token, site_of(self.settings))
        app.web.web_app.middlewares.append(self._index)
        app.timer(RATE_SAMPLE_S)(self._sample)
        observer = self

        async def metrics(view: Any, request: Any) -> Any:
            await observer.refresh_lag()
            body = generate_latest(observer.topology.metrics.registry)
            return view.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(view: Any, request: Any) -> Any:
            return view.json({"status": "alive"})

        async def readyz(view: Any, request: Any) -> Any:
            body = await observer.readiness()
            return view.json(body, status=200 if body["ready"] else 503)

        async def status(view: Any, request: Any) -> Any:
            return view.json(await observer.status())

        async def dead_letters(view: Any, request: Any) -> Any:
            return await observer.dead_letters_page(view, request)

        app.page("/metrics")(metrics)
        app.page("/healthz")(healthz)
        app.page("/readyz")(readyz)
        app.page("/vigil/status")(status)
        app.page("/vigil/dead-letters")(dead_letters)

    @aioweb.middleware
    async def _index(self, request: aioweb.Request, handler: Any) -> aioweb.StreamResponse:
        if request.path == "/":  # Faust's index said OK whatever the state: say the truth
            body = await self.readiness()
            return aioweb.json_response(body, status=200 if body["ready"] else 503)
        response: aioweb.StreamResponse = await handler(request)
        return response

    async def _sample(self) -> None:
        self._rate_in.sample()
        self._rate_evaluated.sample()

    # ---- what is asked -------------------------------------------------------------------

    @property
    def durable_log(self) -> DurableLog | None:
        transport = self.topology.app.transport
        return transport.log if isinstance(transport, LocalTransport) else None

    async def refresh_lag(self) -> dict[str, Any]:
        try:
            self._lag = await self.lag.snapshot()
        except Exception as exc:  # not started, or rebalancing: report, do not fail
            self._lag = {"partitions": {}, "total_lag": None, "error": repr(exc)}
        return self._lag

    async def readiness(self) -> dict[str, Any]:
        """Each check ``{"ok": bool, "detail": str}``; ready when all are ok."""
        checks: dict[str, dict[str, Any]] = {}
        if self.ingest is not None:
            checks["ingest"] = ingest_check(self.ingest)
        log = self.durable_log
        if log is not None:
            try:
                await asyncio.to_thread(log.check_writable)
                checks["log"] = {"ok": True, "detail": f"writable ({log.path})"}
            except Exception as exc:
                checks["log"] = {"ok": False, "detail": f"not writable ({log.path}): {exc}"}
        ruleset = self.topology.ruleset
        count = rule_count(ruleset)
        rules: dict[str, Any] = {
            "ok": count > 0,
            "detail": f"{count} rules, version {ruleset.version[:12]}",
        }
        errors = list(self.reload_errors())
        if errors:
            rules["detail"] += "; the files on disk were rejected, the running rules stay"
            rules["errors"] = errors
        checks["rules"] = rules
        lag = await self.refresh_lag()
        bound = self.settings.web.ready_max_lag_batches
        total = lag.get("total_lag")
        checks["lag"] = {
            "ok": total is not None and total <= bound,
            "detail": f"{total} telemetry batches behind (ready at most {bound})"
            if total is not None
            else f"lag unknown: {lag.get('error')}",
        }
        return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}

    async def status(self) -> dict[str, Any]:
        """What ``vigil status`` shows (its module documents the fields)."""
        metrics = self.topology.metrics
        ready = await self.readiness()
        connectors = []
        if self.ingest is not None:
            o = self.ingest.options
            connectors.append({
                "name": "mqtt",
                "state": self.ingest.state,
                "broker": f"{o.host}:{o.port}",
                "subscription": self.ingest.subscription,
                "counters": dict(self.ingest.counters),
            })  # fmt: skip
            if self.sequences is not None:
                connectors[-1]["sequences"] = {
                    **self.sequences.totals(),
                    "lost_by_device": self.sequences.lost_by_device(),
                }
        if self.nbiot is not None:
            nbiot = self.nbiot.ingest
            connectors.append({
                "name": "nbiot",
                "state": nbiot.state,
                "listen": nbiot.describe(),
                "counters": dict(nbiot.counters),
                **self.nbiot.counts(),
                "unknown_top": dict(nbiot.unknown.top(5)),
                "unreported_top": dict(nbiot.decoder.refused_metrics.top(5)),
            })  # fmt: skip
        ruleset = self.topology.ruleset
        return {
            "app_id": self.settings.app_id,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - metrics.started_at, 1),
            "ready": ready,
            "connectors": connectors,
            "readings_per_s": {
                "received": _round(self._rate_in.per_second()),
                "evaluated": _round(self._rate_evaluated.per_second()),
            },
            "lag": self._lag,
            "rules": {
                "version": ruleset.version,
                "count": rule_count(ruleset),
                "files": [str(p) for p in self.settings.rules],
                "errors": list(self.reload_errors()),
            },
            "active_alerts": metrics.active_by_level(),
            "dead_letters_last_hour": metrics.recent_dead_letters.totals(),
            "counted_since": metrics.started_at,
        }

    async def dead_letters_page(self, view: Any, request: Any) -> Any:
        query = request.query
        try:
            start = int(query["start"]) if "start" in query else None
            since = int(query["since"]) if "since" in query else None
            limit = min(max(int(query.get("limit", 100)), 1), 1000)
        except ValueError:
            return view.json({"error": "start, since and limit are integers"}, status=400)
        topic = self.topology.dead_letter.get_topic_name()
        reason = query.get("reason") or None
        log = self.durable_log
        if log is not None:
            page = await asyncio.to_thread(
                read_dead_letters, log, topic, start=start, since_ms=since,
                reason=reason, limit=limit,
            )  # fmt: skip
            return view.json(page)
        store = self.topology.checkpoint_store  # there exactly when the broker is Kafka
        if store is None:
            return view.json({"error": "no dead-letter topic to read here"}, status=501)
        try:
            page = await read_kafka_dead_letters(
                store.bootstrap, topic, start=start, since_ms=since, reason=reason, limit=limit
            )
        except (TimeoutError, KafkaError) as exc:
            return view.json(
                {"error": f"the Kafka cluster did not answer ({store.bootstrap}): {exc!r}"},
                status=503,
            )
        return view.json(page)


def ingest_check(ingest: Ingest) -> dict[str, Any]:
    """The readiness check of an MQTT ingest: ok while connected and subscribed."""
    o = ingest.options
    return {
        "ok": ingest.state == "subscribed",
        "detail": f"MQTT {ingest.state} ({o.host}:{o.port}, {ingest.subscription})",
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)

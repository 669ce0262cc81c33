"""NB-IoT ingest: the CoAP server, the raw UDP port and the carriers' push receiver,
feeding one micro-batcher and ``connectors.ingest.deliver``.

Every path keeps the rule of ``connectors.ingest``: a sender is answered (CoAP response,
UDP answer, HTTP 200) only after its readings or its dead letter are durable, and
whatever goes wrong with one message dead-letters it, the stream goes on. The new
counters of sealed payloads are made durable after the batch's readings and before its
answers (``connectors.nbiot.seal``).

Dead letters of these paths are written without a log line each (a fleet of
unregistered devices, or a platform pushing with a wrong token, would flood the log):
every ``SUMMARY_S`` the ingest logs one line of what it dead-lettered, by reason, and of
the unregistered identities, busiest first (``unknown``), and likewise of the devices
whose station is unknown and of the metrics their stations do not report (admission,
``connectors.nbiot.uplink``).

What became of the uplinks is counted for ``/metrics`` and ``vigil status``
(``engine.runtime.services.observe_metrics.NbiotState``): ``uplinks`` by path and
outcome (taken, duplicate, refused), ``refused`` by ``uplink.refusal_class``, and the
decoder's ``dropped_readings``.

``join`` raises if the ingest task fails (the log cannot be written): its owner must
end the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiocoap
from aiohttp import web

from connectors.ingest import Admission, DeadLetter, MicroBatcher, Produce, Reading, deliver
from connectors.nbiot.coap import serve_coap
from connectors.nbiot.products import Products
from connectors.nbiot.push import push_app
from connectors.nbiot.seal import Counters
from connectors.nbiot.udp import UdpUplinks
from connectors.nbiot.unknown import UnknownDevices
from connectors.nbiot.uplink import Decoder, Stations, Uplink, refusal_class
from engine.contracts.batch import ReadingBlock
from engine.contracts.devices import DeviceLookup

__all__ = ["NbiotIngest", "NbiotOptions"]

log = logging.getLogger(__name__)

SUMMARY_S = 60.0


@dataclass(frozen=True)
class NbiotOptions:
    host: str = "127.0.0.1"
    #: None: that path is off.
    coap_port: int | None = 5683
    udp_port: int | None = None
    push_port: int | None = None
    ctwing_token: str | None = None
    onenet_token: str | None = None
    #: Where the sealed payloads' counters are kept (RocksDB).
    state_dir: Path = Path("var/vigil/nbiot")
    max_readings: int = 5000
    linger_ms: int = 50
    unknown_capacity: int = 10_000


class NbiotIngest:
    def __init__(
        self,
        options: NbiotOptions,
        devices: DeviceLookup,
        products: Products,
        produce: Produce,
        dead_letter: DeadLetter,
        stations: Stations | None = None,
        admission: Admission | None = None,
    ) -> None:
        """``stations``: the station registry running now, which readings must fit
        (None: any station and metric is taken); ``admission``: the readings' time
        bounds, MQTT's (``ingest.max_clock_skew_s``)."""
        self.options = options
        self.counters: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        #: Uplinks by (path, outcome): outcome ``taken``, ``duplicate`` (a sealed
        #: payload sent again: acknowledged, not ingested) or ``refused``.
        self.uplinks: Counter[tuple[str, str]] = Counter()
        #: Refused uplinks by ``uplink.refusal_class``.
        self.refused: Counter[str] = Counter()
        self.unknown = UnknownDevices(options.unknown_capacity)
        self._seal_counters = Counters(options.state_dir / "counters")
        self.decoder = Decoder(
            devices,
            products,
            self._seal_counters,
            self.unknown,
            options.onenet_token,
            stations,
            options.unknown_capacity,
            admission,
        )
        self._produce = produce
        self._dead_letter = dead_letter
        self._batcher: MicroBatcher[Uplink] = MicroBatcher(options.max_readings, options.linger_ms)
        self._task: asyncio.Task[None] | None = None
        self._coap: aiocoap.Context | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._web: web.AppRunner | None = None
        self._last_summary = time.monotonic()

    def _submit(self, up: Uplink) -> None:
        self._batcher.put(up)

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._batcher.bind(loop)
        self._task = asyncio.ensure_future(self._run())
        o = self.options
        if o.coap_port is not None:
            self._coap = await serve_coap(self._submit, o.host, o.coap_port)
        if o.udp_port is not None:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: UdpUplinks(self._submit), local_addr=(o.host, o.udp_port)
            )
            self._udp = transport
        if o.push_port is not None:
            self._web = web.AppRunner(
                push_app(self._submit, o.ctwing_token, o.onenet_token), access_log=None
            )
            await self._web.setup()
            await web.TCPSite(self._web, o.host, o.push_port).start()

    @property
    def state(self) -> str:
        """``listening`` while the ingest runs, ``failed`` once it failed, else
        ``stopped`` (or not started)."""
        task = self._task
        if task is None or task.cancelled():
            return "stopped"
        if task.done():
            return "failed" if task.exception() is not None else "stopped"
        return "listening"

    def describe(self) -> str:
        o = self.options
        parts = [
            f"coap={o.host}:{o.coap_port}" if o.coap_port is not None else "",
            f"udp={o.host}:{o.udp_port}" if o.udp_port is not None else "",
            f"push=http://{o.host}:{o.push_port}" if o.push_port is not None else "",
        ]
        return " ".join(p for p in parts if p)

    async def join(self) -> None:
        """Wait for the ingest task: raises what made it fail (shielded, like MQTT's)."""
        assert self._task is not None, "join() before start()"
        await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stop listening, then the batch loop; what was not answered, devices resend."""
        if self._coap is not None:
            await self._coap.shutdown()
        if self._udp is not None:
            self._udp.close()
        if self._web is not None:
            await self._web.cleanup()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # raised to join()'s caller already
                log.warning("NB-IoT ingest had failed: %r", exc)
        self._seal_counters.close()
        self._summary()

    # ---- batches -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self.handle(await self._batcher.next_batch())
            if time.monotonic() - self._last_summary >= SUMMARY_S:
                self._summary()

    async def handle(self, batch: Sequence[Uplink]) -> None:
        """Deliver one batch (durable, then answered) and count what became of it."""
        await deliver(batch, self.decoder, self._produce_durably, self._dead, self.counters)
        for m in batch:
            if m.outcome is not None:
                self.uplinks[m.path, "refused"] += 1
                self.refused[refusal_class(m.outcome)] += 1
            else:
                self.uplinks[m.path, "duplicate" if m.duplicate else "taken"] += 1

    async def _produce_durably(self, readings: list[Reading | ReadingBlock]) -> None:
        await self._produce(readings)
        # Before the answers too: the first refused metric of an uplink that gave
        # readings (only such uplinks leave refusals, so produce runs for their batch).
        refusals, self.decoder.refusals = self.decoder.refusals, []
        for raw, reason, source in refusals:
            await self._dead(raw, reason, source)
            self.counters["dead_letter"] += 1
        # After the readings, before the answers: a crash in between makes a resend
        # a duplicate of what is in the log, never a loss.
        await asyncio.to_thread(self._seal_counters.flush)

    async def _dead(self, raw: bytes, reason: str, source: str) -> None:
        await self._dead_letter(raw, reason, source)
        # The reason's words before any identity or number, for the summary.
        self.reasons[
            " ".join(w for w in reason.split()[:3] if not any(c.isdigit() for c in w))
        ] += 1

    def _summary(self) -> None:
        self._last_summary = time.monotonic()
        if self.reasons:
            by_reason = ", ".join(f"{r} ({n})" for r, n in self.reasons.most_common(10))
            log.warning("NB-IoT dead letters since start: %s", by_reason)
        if self.unknown.counts:
            log.warning("NB-IoT unknown devices: %s", self.unknown.summary())
        for refused in (self.decoder.unknown_stations, self.decoder.refused_metrics):
            if refused.counts:
                log.warning("NB-IoT readings not admitted: %s", refused.summary())

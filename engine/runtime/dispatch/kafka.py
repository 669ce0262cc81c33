"""The dispatcher on the Kafka runtime: one elected dispatcher for the whole app.

Every worker forwards every alert event of the alerts partitions it owns to the
one-partition topic ``<app_id>-dispatch`` (``Topology.alert_senders``: the send is
awaited before the alerts' offsets may commit, as corroboration's are). The workers are
also members of the consumer group ``<app_id>-dispatcher`` on that topic: whichever is
assigned its one partition runs the ``DispatchService`` -- the same routing, grouping,
escalation, silences, acknowledgement and delivery as on the gateway -- until the
partition is revoked. The others pass API requests, acknowledge links and the duty
room's station list and live stream on to it (``engine.runtime.dispatch.forwarding``);
every worker serves the duty room's page (``engine.runtime.dispatch.console``) and its
own station board to the owner, which merges them all (``board_cluster``).

Why one dispatcher rather than one per partition of a topic keyed by group
(``engine/dispatch/README.md``'s first plan): a group must gather all of its alerts,
inhibition compares alerts of different stations (a basin alert covers its gauges),
and silences and rate limits are per receiver across every group: one dispatcher has
the gateway's exact semantics, with no constraint tying routing files' ``group_by`` to
a partitioning, one store, and one place for people's actions to go. Its load is the
alerts, not the readings (the gateway's dispatcher keeps up with ~2,000 transitions/s).

Taking the dispatcher over, its state in Kafka and the hand-over at a rebalance are
``engine.runtime.dispatch.kafka_ownership``'s; this module wires it into the worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from engine.contracts.alerts import AlertEvent, pack_lines
from engine.dispatch.config import load_dispatch_config
from engine.runtime.config import Settings
from engine.runtime.dispatch.api import install_api
from engine.runtime.dispatch.board import StationBoard
from engine.runtime.dispatch.board_cluster import ClusterBoard, board_route
from engine.runtime.dispatch.board_kafka import BoardReadBack
from engine.runtime.dispatch.console import install_console
from engine.runtime.dispatch.forwarding import OwnerForwarder, find_owner, group_members
from engine.runtime.dispatch.kafka_ownership import DispatchOwnership
from engine.runtime.dispatch.wiring import build_receivers, links_of
from engine.runtime.sending import Outgoing
from engine.runtime.topology import Topology
from engine.runtime.web_access import peer_ssl_context
from rules.registry import load_registry

__all__ = ["KafkaDispatch"]


class KafkaDispatch:
    """Forwards this worker's alerts to the dispatch topic and runs the dispatcher
    while this worker owns that topic's partition (``ownership``). ``install`` hooks it
    into the app."""

    def __init__(self, settings: Settings, topology: Topology, bootstrap: str) -> None:
        d = settings.dispatch
        assert d is not None
        self.settings = settings
        self.topology = topology
        self.bootstrap = bootstrap
        config = load_dispatch_config(d.routes)
        build_receivers(config)  # a bad receiver fails at start, not at ownership
        #: The stations of the duty room's page, and the readings of the partitions this
        #: worker evaluates (read back when assigned to it).
        self.registry = load_registry(settings.stations)
        self.board = StationBoard()
        #: The port this worker's API listens on (``--web-port`` wins over the settings').
        web_port = int(topology.app.conf.web_port)
        self.ownership = DispatchOwnership(
            d, config, bootstrap=bootstrap, app_id=settings.app_id, web_port=web_port,
            links=links_of(settings, web_port), crash=topology.app.crash,
        )  # fmt: skip
        self._out = topology.app.topic(
            self.ownership.topic, key_serializer="raw", value_serializer="raw", partitions=1
        )

    def install(self) -> None:
        app = self.topology.app
        ownership = self.ownership
        self.topology.alert_senders.append(self.forward)
        app.task(ownership.run)

        async def stop(app: Any, **kwargs: Any) -> None:
            await ownership.stop()

        app.on_before_shutdown.connect(stop)
        to_owner, scheme = self._forwarder()
        router = app.web.web_app.router
        install_api(router, lambda: ownership.service, to_owner.api)
        self.topology.batch_listeners.append(self.board.observe)
        # Read back the partitions assigned to this worker: after a restart, or taken
        # over from another, they show what they showed before (``board_kafka``).
        telemetry = self.topology.telemetry.get_topic_name()
        BoardReadBack(self.board, self.bootstrap, telemetry, str(app.conf.id)).install(app)
        # The page sees every worker's stations: the owner merges the peers' boards.
        token = self.settings.web.token()
        merged = ClusterBoard(
            self.board, to_owner, self._member_urls(scheme),
            {"Authorization": f"Bearer {token}"} if token else {},
        )  # fmt: skip
        router.add_route("GET", "/api/board", board_route(self.board, merged.epoch))

        async def stop_polling(app: Any, **kwargs: Any) -> None:
            await merged.stop()

        app.on_before_shutdown.connect(stop_polling)
        install_console(
            router, lambda: ownership.service, lambda: self.registry.stations,
            board=merged, forward=to_owner.api, forward_stream=to_owner.stream,
        )  # fmt: skip

    def _member_urls(self, scheme: str) -> Callable[[], Awaitable[list[str]]]:
        """The web URLs of the dispatcher group's members: every worker of the app."""

        async def urls() -> list[str]:
            members = await group_members(self.bootstrap, self.ownership.group_id, scheme)
            return [url for url, _ in members]

        return urls

    def _forwarder(self) -> tuple[OwnerForwarder, str]:
        """What passes this worker's dispatcher requests to the owner, and the scheme:
        HTTPS when the workers' web ports speak it (``web.tls``), else HTTP."""
        tls = self.settings.web.tls
        scheme, context = "http", None
        if tls is not None:
            scheme = "https"
            context = peer_ssl_context(
                tls.cert_file, tls.key_file, tls.peer_ca_file, tls.client_ca_file
            )
        forwarder = OwnerForwarder(
            lambda: find_owner(self.bootstrap, self.ownership.group_id, self.ownership.tp, scheme),
            context,
        )
        return forwarder, scheme

    async def forward(self, events: list[AlertEvent]) -> None:
        """Every event of an alerts record to the dispatch topic, in one durable write;
        returns once durable."""
        topic = self._out.get_topic_name()
        await self.topology.send_together(
            [Outgoing(topic, record, 0) for record in pack_lines(e.to_json() for e in events)]
        )

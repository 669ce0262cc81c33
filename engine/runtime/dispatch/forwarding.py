"""Requests to a Kafka worker that does not run the dispatcher, passed on to the worker
that does (``engine.runtime.dispatch.kafka``: one elected dispatcher per app), and how a
worker finds it: the dispatcher group's member assigned the dispatch partition, at the
host the broker sees it from and the web port its client id carries.

``OwnerForwarder`` finds the owner's ``http(s)://host:port`` with the function it is given
(the dispatcher group's description) and passes the request on once, marked with
``X-Vigil-Forwarded``: a forwarded request that reaches a worker which no longer owns the
dispatcher (ownership moving) is answered 503, to be tried again, never passed on a
second time. The owner's answer comes back as it is, with ``X-Vigil-Served-By`` naming
the owner. The web port's access rule (``engine.runtime.web_access``) has already
judged the request here; its ``Authorization`` header is passed on for the owner's.
With ``web.tls`` the workers speak HTTPS to each other too (``web_access.peer_ssl_context``):
a bearer token never crosses the network in clear on the way to the owner.

Every worker is a member of the dispatcher group (``group_members``), the owner and the
others alike: the same description lists the peers whose station boards the owner merges
(``board_cluster``), fetched with the same TLS context (``OwnerForwarder.get_json``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
from aiohttp import web
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from engine.runtime.dispatch.api import error_response

__all__ = ["SERVED_BY", "OwnerForwarder", "find_owner", "group_members", "owner_client_id"]

log = logging.getLogger("vigil.dispatch")

#: Header of a request forwarded to the owner (never forwarded twice).
_FORWARDED = "X-Vigil-Forwarded"
#: Header of an answer the owner gave through this worker: the owner's address.
SERVED_BY = "X-Vigil-Served-By"
#: Request headers passed on to the owner.
_PASSED = {"authorization", "content-type", "accept"}
#: The dispatcher consumers' client id is this and the worker's web port.
_CLIENT_ID = "vigil-dispatch-api-port-"


def owner_client_id(web_port: int) -> str:
    """The client id of a worker's dispatcher consumer: it carries the worker's web port."""
    return f"{_CLIENT_ID}{web_port}"


async def group_members(
    bootstrap: str, group_id: str, scheme: str = "http"
) -> list[tuple[str, list[TopicPartition]]]:
    """Each member of consumer group ``group_id`` whose client id came from
    ``owner_client_id``: ``(<scheme>://<host>:<web port>, its assigned partitions)``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    members = []
    for group in response.to_object()["groups"]:
        for member in group["members"]:
            if not member["client_id"].startswith(_CLIENT_ID):
                continue
            raw = member["member_assignment"]
            partitions = ConsumerProtocolMemberAssignment.decode(raw).partitions() if raw else []
            host = member["client_host"].lstrip("/")
            url = f"{scheme}://{host}:{member['client_id'][len(_CLIENT_ID) :]}"
            members.append((url, list(partitions)))
    return members


async def find_owner(
    bootstrap: str, group_id: str, tp: TopicPartition, scheme: str = "http"
) -> str | None:
    """``<scheme>://<host>:<web port>`` of the member of consumer group ``group_id``
    assigned ``tp`` (its client id from ``owner_client_id``), None if no member is."""
    for url, partitions in await group_members(bootstrap, group_id, scheme):
        if tp in partitions:
            return url
    return None


class OwnerForwarder:
    """``api`` and ``stream`` handlers that pass a request on to the dispatcher's owner;
    ``owner_url`` gives its ``http(s)://host:port``, or None while no worker owns it;
    ``tls`` is the client context for ``https`` owners (``web_access.peer_ssl_context``)."""

    def __init__(
        self, owner_url: Callable[[], Awaitable[str | None]], tls: ssl.SSLContext | None = None
    ) -> None:
        self.owner_url = owner_url
        #: What httpx checks the owner's certificate with (its default: the system's CAs).
        self._verify: ssl.SSLContext | bool = tls if tls is not None else True

    async def _target(self, request: web.Request) -> str | web.Response:
        """The owner's URL, or the 503 to answer with (forwarded already, or no owner)."""
        if request.headers.get(_FORWARDED):
            return error_response(503, "the dispatcher is moving between workers; try again")
        try:
            url = await self.owner_url()
        except Exception as exc:  # the broker unreachable, or mid-rebalance
            log.warning("dispatcher: could not find its owner: %r", exc)
            url = None
        if url is None:
            return error_response(
                503, "no worker runs the dispatcher right now (it is moving); try again"
            )
        return url

    async def get_json(
        self, urls: Mapping[str, str], headers: Mapping[str, str], timeout_s: float
    ) -> dict[str, Any]:
        """``GET`` each of ``urls`` (name -> URL) at once, marked forwarded, with
        ``headers``: name -> the JSON of a 200 answer, or None (no answer in
        ``timeout_s`` seconds, another status, not JSON)."""

        async def one(client: httpx.AsyncClient, url: str) -> Any:
            try:
                answer = await client.get(url, headers={**headers, _FORWARDED: "1"})
                return answer.json() if answer.status_code == 200 else None
            except (httpx.HTTPError, ValueError) as exc:
                log.info("dispatcher: %s did not answer: %r", url, exc)
                return None

        async with httpx.AsyncClient(timeout=timeout_s, verify=self._verify) as client:
            answers = await asyncio.gather(*(one(client, url) for url in urls.values()))
        return dict(zip(urls, answers, strict=True))

    @staticmethod
    def _headers(request: web.Request) -> dict[str, str]:
        passed = {k: v for k, v in request.headers.items() if k.lower() in _PASSED}
        return {**passed, _FORWARDED: "1"}

    async def api(self, request: web.Request) -> web.StreamResponse:
        """An API request, answered with the owner's answer as it is (30 s timeout)."""
        url = await self._target(request)
        if isinstance(url, web.Response):
            return url
        try:
            async with httpx.AsyncClient(timeout=30, verify=self._verify) as client:
                answer = await client.request(
                    request.method, url + request.path_qs, content=await request.read(),
                    headers=self._headers(request),
                )  # fmt: skip
        except httpx.HTTPError as exc:
            return error_response(502, f"the dispatcher's worker at {url} did not answer: {exc}")
        kept = {k: v for k, v in answer.headers.items() if k.lower() == "content-type"}
        kept[SERVED_BY] = url
        return web.Response(status=answer.status_code, body=answer.content, headers=kept)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """``/api/stream``: the owner's event stream, passed on as it comes. It ends when
        the owner's does (ownership moved, the owner gone): the page reconnects, and is
        passed to the new owner."""
        url = await self._target(request)
        if isinstance(url, web.Response):
            return url
        # No read timeout: the owner writes a keep-alive comment every 15 s.
        timeout = httpx.Timeout(30, read=None)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                     SERVED_BY: url}
        )  # fmt: skip
        try:
            async with (
                httpx.AsyncClient(timeout=timeout, verify=self._verify) as client,
                client.stream(
                    "GET", url + request.path_qs, headers=self._headers(request)
                ) as answer,
            ):
                if answer.status_code != 200:
                    return web.Response(
                        status=answer.status_code, body=await answer.aread(),
                        headers={"Content-Type": answer.headers.get("content-type", "")},
                    )  # fmt: skip
                await response.prepare(request)
                async for chunk in answer.aiter_raw():
                    await response.write(chunk)
        except httpx.HTTPError as exc:
            if not response.prepared:
                return error_response(
                    502, f"the dispatcher's worker at {url} did not answer: {exc}"
                )
            log.info("dispatcher: the owner's event stream ended: %r", exc)
        return response

"""CoAP over UDP (aiocoap): devices POST their readings to ``/nb/<identity>`` (the
identity in the URI path; sealed payloads need it) or to ``/nb`` with a SenML pack
whose base name is the device.

A request is answered only after what it carried is durable in the telemetry log (or,
rejected, in the dead-letter topic): 2.04 Changed for readings (and for a sealed payload
sent again), 4.01 Unauthorized for a payload that fails authentication, 4.04 Not Found
for an unknown device (and for a registered one whose station, or every metric sent,
the station registry does not have), 4.00 Bad Request for a payload that cannot be
read; the reason is the diagnostic payload. A confirmable request the gateway dies on
is not acknowledged, so the device sends it again. Block-wise uploads (Block1, a
backlog larger than one datagram) are reassembled by aiocoap before the resource sees
them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiocoap
from aiocoap import resource

from connectors.nbiot.seal import AuthError
from connectors.nbiot.uplink import NotAdmitted, UnknownDevice, Uplink

__all__ = ["ANY_ADDRESS", "UplinkResource", "serve_coap", "transport_for"]

PREFIX = "nb"


def _code(up: Uplink) -> aiocoap.numbers.codes.Code:
    if up.outcome is None:
        return aiocoap.CHANGED
    if isinstance(up.outcome, AuthError):
        return aiocoap.UNAUTHORIZED
    if isinstance(up.outcome, UnknownDevice | NotAdmitted):
        return aiocoap.NOT_FOUND
    return aiocoap.BAD_REQUEST


class UplinkResource(resource.Resource, resource.PathCapable):
    """The root of the CoAP site: every path arrives here, ``/nb`` and ``/nb/<id>`` are
    served, the rest is 4.04."""

    def __init__(self, submit: Callable[[Uplink], None]) -> None:
        super().__init__()
        self._submit = submit

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        path = request.opt.uri_path
        if not path or path[0] != PREFIX or len(path) > 2:
            return aiocoap.Message(code=aiocoap.NOT_FOUND)
        identity = path[1] if len(path) == 2 else None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def ack() -> None:
            if not done.done():
                done.set_result(None)

        fmt = request.opt.content_format
        up = Uplink(
            source=f"nbiot:coap:{request.remote.hostinfo}/{'/'.join(path)}",
            payload=bytes(request.payload),
            received_ms=int(time.time() * 1000),
            ack=ack,
            path="coap",
            identity=identity,
            content_format=None if fmt is None else int(fmt),
        )
        self._submit(up)
        await done
        reason = b"" if up.outcome is None else str(up.outcome).encode()[:200]
        return aiocoap.Message(code=_code(up), payload=reason)


#: Hosts that bind every address of the machine.
ANY_ADDRESS = ("", "0.0.0.0", "::")


def transport_for(host: str) -> str:
    """The aiocoap server transport for ``host``: ``simplesocketserver`` for one address,
    ``udp6`` for the any-address.

    Why not always ``udp6``: it reads each datagram with ``recvmsg`` and its ancillary
    data, and its peer address parses the address text with ``ipaddress`` each time it
    is shown (``hostinfo``, and aiocoap's ``repr`` of every request, which it builds
    eagerly to name the rendering task): under load that was a third of the gateway's
    CPU per CoAP uplink (py-spy, ``bench/NBIOT_RESULTS.md``). ``simplesocketserver``
    is aiocoap's plain asyncio datagram server, whose peer address is the socket's
    ``(host, port)``. It cannot serve the any-address (it could not tell which of the
    machine's addresses a request came to, to answer from it), and it does not hear
    ICMP errors (a separate response to a device gone is retransmitted until it gives
    up, as over any path that loses them); the any-address keeps ``udp6``."""
    return "udp6" if host in ANY_ADDRESS else "simplesocketserver"


async def serve_coap(submit: Callable[[Uplink], None], host: str, port: int) -> aiocoap.Context:
    """A CoAP server on ``host:port`` (UDP, ``transport_for(host)``); ``shutdown()``
    the context to stop it."""
    return await aiocoap.Context.create_server_context(
        UplinkResource(submit), bind=(host, port), transports=[transport_for(host)]
    )

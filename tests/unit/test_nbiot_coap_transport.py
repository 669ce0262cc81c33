"""The CoAP server's transport (``connectors.nbiot.coap.transport_for``): aiocoap's
plain datagram server for one address (its per-message peer-address parsing under
``udp6`` was a third of the gateway's CPU per uplink), ``udp6`` for the any-address;
on either, a confirmable POST is answered 2.04 only once its uplink is acknowledged
(durable), and a block-wise upload arrives whole."""

from __future__ import annotations

import asyncio
import socket

import aiocoap
import pytest
from aiocoap.transports.simplesocketserver import MessageInterfaceSimpleServer
from aiocoap.transports.udp6 import MessageInterfaceUDP6

from connectors.nbiot.coap import serve_coap, transport_for
from connectors.nbiot.uplink import Uplink


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_address_gets_the_plain_server_the_any_address_udp6() -> None:
    assert transport_for("127.0.0.1") == "simplesocketserver"
    assert transport_for("::1") == "simplesocketserver"
    assert transport_for("0.0.0.0") == "udp6"
    assert transport_for("::") == "udp6"
    assert transport_for("") == "udp6"


@pytest.mark.parametrize(
    ("host", "interface"),
    [("127.0.0.1", MessageInterfaceSimpleServer), ("0.0.0.0", MessageInterfaceUDP6)],
)
def test_answered_only_once_acknowledged_on_either_transport(host: str, interface: type) -> None:
    asyncio.run(_answered_once_acknowledged(host, interface))


async def _answered_once_acknowledged(host: str, interface: type) -> None:
    port = free_udp_port()
    taken: asyncio.Queue[Uplink] = asyncio.Queue()
    server = await serve_coap(taken.put_nowait, host, port)
    client = await aiocoap.Context.create_client_context()
    try:
        # request interfaces: token managers over message managers over the transport
        transports = [i.token_interface.message_interface for i in server.request_interfaces]
        assert [type(t) for t in transports] == [interface]
        backlog = bytes(range(256)) * 12  # over one block: a Block1 upload
        for identity, body in (("861000000000041", b"\x01abcdefgh"), ("861000000000042", backlog)):
            request = aiocoap.Message(
                code=aiocoap.POST, uri=f"coap://127.0.0.1:{port}/nb/{identity}", payload=body
            )
            answer = asyncio.ensure_future(client.request(request).response)
            up = await asyncio.wait_for(taken.get(), 30)
            assert (up.identity, up.payload, up.path) == (identity, body, "coap")
            assert up.source.startswith("nbiot:coap:127.0.0.1:")
            await asyncio.sleep(0.3)
            assert not answer.done(), "answered before the uplink was durable"
            assert up.ack is not None
            up.ack()
            response = await asyncio.wait_for(answer, 30)
            assert response.code == aiocoap.CHANGED
    finally:
        await client.shutdown()
        await server.shutdown()

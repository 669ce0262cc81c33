"""The MQTT client's construction, connection state and acknowledgements, shared by the
ingest in the gateway process (``connectors.mqtt.client``), its worker processes
(``connectors.mqtt.pool``) and the broker-drops watcher; the fence that leaves the
broker only once it has read the acknowledgements (``AckFence``)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
import threading
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.mqtt.options import MqttOptions

__all__ = [
    "FENCE_FILTER",
    "PUBACK_PACKET",
    "SESSION_EXPIRY_S",
    "AckFence",
    "Connection",
    "PubAck",
    "ack_together",
    "connect",
    "describe_failure",
    "end_session",
    "new_client",
    "set_done",
]

log = logging.getLogger(__name__)

#: MQTT 5 session expiry (s): never, like an MQTT 3.1.1 persistent session (the broker
#: keeps what the client did not acknowledge until the client with its id comes back).
SESSION_EXPIRY_S = 0xFFFFFFFF


def new_client(o: MqttOptions, client_id: str, *, clean_session: bool) -> mqtt.Client:
    """A paho client with manual acknowledgement, ``o``'s credentials and TLS, and a
    reconnect backoff of 1 s doubling to 10 s. A persistent one (``clean_session``
    False) speaks MQTT 5 when ``o.mqtt5`` (its session expiry is set by ``connect``)."""
    v5 = not clean_session and o.mqtt5
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=None if v5 else clean_session,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
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


def connect(client: mqtt.Client, o: MqttOptions) -> None:
    """Connect in the background (paho's thread); MQTT 5: clean start off, a session that
    never expires."""
    if client.protocol == mqtt.MQTTv5:
        expiry = Properties(PacketTypes.CONNECT)
        expiry.SessionExpiryInterval = SESSION_EXPIRY_S
        client.connect_async(o.host, o.port, o.keepalive, clean_start=False, properties=expiry)
    else:
        client.connect_async(o.host, o.port, o.keepalive)
    client.loop_start()


@dataclass
class Connection:
    """The broker connection as the ingest last saw it (written by paho's thread, read
    anywhere: each field is one plain value). ``error``: why the last attempt failed or
    the connection dropped, None once connected; ``since_ms``: when ``connected`` last
    changed (epoch ms)."""

    connected: bool = False
    error: str | None = None
    since_ms: int = 0
    failures: int = 0  # failed attempts since the last success


def describe_failure(exc: BaseException | None) -> str:
    """A connect failure as an operator reads it: what failed and why."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"name resolution failed: {exc.strerror}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "connection timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return repr(exc) if exc is not None else "unknown reason"


#: A PUBACK: fixed header (type, remaining length 2), packet id (MQTT 3.1.1, 3.4;
#: MQTT 5, 3.4.2.1: a remaining length of 2 means reason code 0, success).
PUBACK_PACKET = struct.Struct("!BBH")


class PubAck:
    """``Inbound.ack`` of a QoS 1 message: its PUBACK, alone when called, or with the
    rest of its batch (``MqttIngest._ack_batch``)."""

    __slots__ = ("client", "mid")

    def __init__(self, client: mqtt.Client, mid: int) -> None:
        self.client = client
        self.mid = mid

    def __call__(self) -> None:
        self.client.ack(self.mid, 1)


def ack_together(client: mqtt.Client, acks: list[PubAck]) -> None:
    """Acknowledge QoS 1 messages: their PUBACKs as one packet queued for paho's network
    thread, which is woken once. paho's own ``ack`` queues one packet and writes to the
    thread's wake-up socket per message, which cost a quarter of the event loop's time.
    ``_packet_queue`` is paho's (2.x, pinned in constraints.txt); should a release lack
    it, each message is acknowledged alone."""
    if not acks:
        return
    queue = getattr(client, "_packet_queue", None)
    if queue is None:
        for ack in acks:
            ack()
        return
    packet = b"".join([PUBACK_PACKET.pack(mqtt.PUBACK, 2, a.mid) for a in acks])
    queue(mqtt.PUBACK, packet, 0, 0)


#: How long ``AckFence.leave`` waits for the broker to answer the UNSUBSCRIBE that
#: follows the last PUBACKs (s); without an answer (the connection is lost) it leaves
#: anyway.
FENCE_TIMEOUT_S = 10.0
#: The topic filter of that UNSUBSCRIBE: never subscribed (the broker answers an
#: UNSUBSCRIBE of any filter; MQTT 3.1.1, 3.10.4), so it changes nothing.
FENCE_FILTER = "$vigil/ack-fence"


class AckFence:
    """Leaving the broker only once it has read the PUBACKs sent before (``leave``).

    The broker handles a connection's packets in order, so its answer to an UNSUBSCRIBE
    sent after the PUBACKs says it has read them. Without that wait the PUBACKs can be
    lost in the close: mosquitto reads one packet at a time, and a socket closed with
    messages it sent still unread is reset, which fails its next write and ends the
    connection with the rest unread: the broker then delivers those messages again.
    ``answered`` is the client's ``on_unsubscribe`` (paho's thread)."""

    def __init__(self) -> None:
        self._answer: asyncio.Future[None] | None = None

    def answered(self) -> None:
        """The broker answered an UNSUBSCRIBE (any thread)."""
        answer = self._answer
        if answer is not None:
            answer.get_loop().call_soon_threadsafe(set_done, answer)

    async def unsubscribe(self, client: mqtt.Client, topic: str) -> None:
        """UNSUBSCRIBE ``topic`` and wait for the answer (at most ``FENCE_TIMEOUT_S``:
        without one, the connection is lost)."""
        # Set before the UNSUBSCRIBE: its answer may come before ``unsubscribe`` returns.
        self._answer = answer = asyncio.get_running_loop().create_future()
        try:
            if client.unsubscribe(topic)[0] == mqtt.MQTT_ERR_SUCCESS:
                async with asyncio.timeout(FENCE_TIMEOUT_S):
                    await answer
        except TimeoutError:
            log.warning("MQTT broker did not answer an UNSUBSCRIBE of %s", topic)
        finally:
            self._answer = None

    async def leave(self, client: mqtt.Client) -> None:
        """UNSUBSCRIBE ``FENCE_FILTER``, wait for the answer (``unsubscribe``), then
        disconnect and stop the client's network thread."""
        await self.unsubscribe(client, FENCE_FILTER)
        client.disconnect()
        client.loop_stop()


def end_session(o: MqttOptions, client_id: str) -> None:
    """End the broker's session of ``client_id`` (blocking, at most ``FENCE_TIMEOUT_S``):
    connect with a clean session, which discards it (MQTT 3.1.1, 3.1.2.4; an MQTT 5
    session too), and disconnect."""
    client = new_client(o, client_id, clean_session=True)
    answered = threading.Event()
    codes = []

    def on_connect(client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        codes.append(reason_code)
        answered.set()

    client.on_connect = on_connect
    client.connect(o.host, o.port, o.keepalive)
    client.loop_start()
    try:
        if not answered.wait(FENCE_TIMEOUT_S):
            raise TimeoutError(f"no CONNACK for {client_id} in {FENCE_TIMEOUT_S:.0f} s")
        if codes[0].is_failure:
            raise ConnectionError(f"{client_id} refused by the broker: {codes[0]}")
    finally:
        client.disconnect()
        client.loop_stop()


def set_done(future: asyncio.Future[None]) -> None:
    """Resolve ``future`` unless it is already (cancelled, or resolved before)."""
    if not future.done():
        future.set_result(None)

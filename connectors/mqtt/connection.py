"""The MQTT client's connection state and acknowledgements, shared by the ingest in the
gateway process (``connectors.mqtt.client``) and its worker processes
(``connectors.mqtt.pool``)."""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass

import paho.mqtt.client as mqtt

__all__ = ["PUBACK_PACKET", "Connection", "PubAck", "describe_failure"]


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

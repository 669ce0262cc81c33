"""The centre's replies to an HJ 212 station, as pure functions of the packet.

A packet whose Flag has bit 0 (A) set asks for a reply: an upload of data (CN 2011,
2051, 2061, 2031 ...) gets a data response (CN 9014), a request from the station a
request response (CN 9011, ``QnRtn`` 1 = ready to execute). Both echo the packet's QN,
PW and MN, are system-interaction packets (ST 91) and ask for no reply themselves
(Flag 4: the 2017 version, no ack, no packets).
"""

from __future__ import annotations

from connectors.hj212.frame import Packet, encode

__all__ = ["data_response", "request_response", "wants_reply"]


def wants_reply(packet: Packet) -> bool:
    flag = packet.flag
    return flag is not None and flag & 1 == 1


def _reply(packet: Packet, cn: str, cp: str) -> bytes:
    h = packet.header
    qn = f"QN={h['QN']};" if "QN" in h else ""
    return encode(f"{qn}ST=91;CN={cn};PW={h.get('PW', '')};MN={h['MN']};Flag=4;CP=&&{cp}&&")


def data_response(packet: Packet) -> bytes:
    """CN 9014: the data of ``packet`` were received (send once they are durable)."""
    return _reply(packet, "9014", "")


def request_response(packet: Packet, qn_rtn: int = 1) -> bytes:
    """CN 9011: the request in ``packet`` is accepted (1) or refused (2 .. 100)."""
    return _reply(packet, "9011", f"QnRtn={qn_rtn}")

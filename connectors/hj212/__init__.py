"""HJ 212-2017 pollution-source and air-quality telemetry: packet decoding and replies."""

from connectors.hj212.frame import Packet, crc, decode, encode
from connectors.hj212.reply import data_response, request_response, wants_reply

__all__ = ["Packet", "crc", "data_response", "decode", "encode", "request_response", "wants_reply"]

"""SL 651-2014 hydrological telemetry: frame decoding, reassembly and replies."""

from connectors.sl651.frame import Frame, decode, decode_ascii, decode_hex
from connectors.sl651.reassembly import Reassembler
from connectors.sl651.reply import ack_frame, wants_ack

__all__ = ["Frame", "Reassembler", "ack_frame", "decode", "decode_ascii", "decode_hex", "wants_ack"]

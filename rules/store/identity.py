"""Device identities as the registry checks them: IMEI, IMSI or a platform's device id.

Contract: ``identity_problem(id_type, identity)`` is None for a well-formed identity, or
the message saying what is wrong with it. The registry is keyed by the identity string
itself (``engine.contracts.devices``); the type is checked on import, not stored.

- ``imei``: 15 digits whose last is the Luhn check digit of the first 14 (3GPP TS 23.003),
  as modules report it and CTWing checks it.
- ``imsi``: 14 or 15 digits (MCC, MNC, MSIN).
- ``device_id``: a platform's device id, 1 to 64 printable ASCII characters, no spaces.
"""

from __future__ import annotations

import re

__all__ = ["ID_TYPES", "identity_problem", "imei_check_digit", "make_imei"]

ID_TYPES = ("imei", "imsi", "device_id")

_DEVICE_ID = re.compile(r"^[\x21-\x7e]{1,64}$")


def imei_check_digit(first14: str) -> int:
    """The Luhn check digit of an IMEI's first 14 digits."""
    total = 0
    for i, ch in enumerate(first14):
        d = ord(ch) - 48
        if i % 2:  # every second digit from the left is doubled
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return (10 - total % 10) % 10


def make_imei(tac: int, serial: int) -> str:
    """A valid IMEI from an 8-digit type allocation code and a 6-digit serial number."""
    first14 = f"{tac:08d}{serial:06d}"
    return first14 + str(imei_check_digit(first14))


def identity_problem(id_type: str, identity: str) -> str | None:
    if id_type == "imei":
        if len(identity) != 15 or not identity.isascii() or not identity.isdigit():
            return f"malformed IMEI {identity!r}: expected 15 digits"
        expected = imei_check_digit(identity[:14])
        if int(identity[14]) != expected:
            return f"malformed IMEI {identity!r}: check digit {identity[14]}, expected {expected}"
        return None
    if id_type == "imsi":
        if len(identity) not in (14, 15) or not identity.isascii() or not identity.isdigit():
            return f"malformed IMSI {identity!r}: expected 14 or 15 digits"
        return None
    if not _DEVICE_ID.match(identity):
        return (
            f"malformed device id {identity!r}: expected 1 to 64 printable ASCII "
            "characters without spaces"
        )
    return None

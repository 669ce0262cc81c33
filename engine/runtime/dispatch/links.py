"""Signed acknowledge links: whoever holds the link may acknowledge that one alert,
until it expires, without logging in.

A token is ``<fingerprint>.<expires_ms>.<signature>``; the signature is the first 128
bits of HMAC-SHA256(secret, ``"ack.<fingerprint>.<expires_ms>"``), base64url without
padding. It names one alert and one deadline, so it can neither be moved to another
alert nor extended; the secret (from the environment, never the settings file) is the
gateway's alone. The link opens a confirm page (``GET``: a mail client or a chat
robot's link preview must not acknowledge); the page's button ``POST``s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

__all__ = ["AckLinks", "LinkError"]


class LinkError(ValueError):
    """A token that is malformed, forged or expired; the message says which."""


@dataclass(frozen=True)
class AckLinks:
    """``base_url`` is how people reach the gateway's web port (``http://host:port``);
    ``ttl_ms`` how long a link stays good after its notification was made."""

    secret: bytes
    base_url: str
    ttl_ms: int

    def token(self, fingerprint: str, expires_ms: int) -> str:
        return f"{fingerprint}.{expires_ms}.{self._sign(fingerprint, expires_ms)}"

    def url(self, fingerprint: str, now_ms: int) -> str:
        """The link for a notification made at ``now_ms`` (the dispatcher's ``links``)."""
        return f"{self.base_url.rstrip('/')}/ack/{self.token(fingerprint, now_ms + self.ttl_ms)}"

    def verify(self, token: str, now_ms: int) -> str:
        """The fingerprint the token is good for at ``now_ms``; LinkError otherwise."""
        parts = token.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            raise LinkError("this is not an acknowledge link")
        fingerprint, expires, signature = parts[0], int(parts[1]), parts[2]
        if not hmac.compare_digest(signature, self._sign(fingerprint, expires)):
            raise LinkError("this acknowledge link is not valid (altered or from another gateway)")
        if now_ms >= expires:
            raise LinkError("this acknowledge link has expired; use the CLI or the API")
        return fingerprint

    def _sign(self, fingerprint: str, expires_ms: int) -> str:
        mac = hmac.new(self.secret, f"ack.{fingerprint}.{expires_ms}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()[:16]).rstrip(b"=").decode()

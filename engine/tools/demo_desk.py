"""The demo's receiving side: a duty room's webhook and mail server, on loopback.

``Desk`` runs an HTTP server (the ``vigil`` webhook template: it checks
``X-Vigil-Signature`` and drops a repeated ``Idempotency-Key``, as a receiver should)
and an SMTP server (aiosmtpd), both on free loopback ports in threads of this process.
What they receive is queued as ``Arrival``s for the demo to print and act on.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import queue
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from connectors.mqtt.mosquitto import free_port

__all__ = ["Arrival", "Desk"]


@dataclass(frozen=True)
class Arrival:
    """One notification received: by webhook (``body``: its JSON) or by mail
    (``body``: ``{"subject", "message_id"}``). ``path`` is the webhook's path
    (``/duty-room``) or ``mail``."""

    path: str
    body: dict[str, Any]
    signed: bool = True


@dataclass
class Desk:
    """``with Desk(secret) as desk``: ``desk.url`` (webhooks), ``desk.smtp_port``."""

    secret: str
    arrivals: queue.Queue[Arrival] = field(default_factory=queue.Queue)
    _keys: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Desk:
        desk = self

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                mac = hmac.new(desk.secret.encode(), raw, hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(
                    self.headers.get("X-Vigil-Signature", ""), f"sha256={mac}"
                )
                desk._take(self.headers.get("Idempotency-Key", ""), self.path, json.loads(raw),
                           signed)  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self.smtp_port = free_port()
        self._smtp = Controller(_Mailbox(self), hostname="127.0.0.1", port=self.smtp_port)
        self._smtp.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._smtp.stop()
        self._http.shutdown()
        self._http.server_close()

    def _take(self, key: str, path: str, body: dict[str, Any], signed: bool) -> None:
        with self._lock:
            if key in self._keys:
                return  # a resend after a restart: already have it
            self._keys.add(key)
        self.arrivals.put(Arrival(path, body, signed))


class _Mailbox:
    def __init__(self, desk: Desk) -> None:
        self.desk = desk

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        subject, mid = str(msg["Subject"]), str(msg["Message-ID"])
        self.desk._take(mid, "mail", {"subject": subject, "message_id": mid}, True)
        return "250 accepted"

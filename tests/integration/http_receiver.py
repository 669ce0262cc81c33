"""A real HTTP server on a free loopback port that records what it is sent.

``port`` 0 picks a free one (a given port lets a test restart a receiver in place).
``answers`` is a queue of ``(status, body)`` to reply with, one per request, then
``(200, default_body)``; ``hold`` makes the server wait (for a client's timeout) before
answering while it is not set.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    raw_query: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.raw_query, keep_blank_values=True).items()}

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    """``with HttpReceiver() as server: server.url`` -- requests in ``server.requests``."""

    def __init__(self, default_body: bytes = b"{}", port: int = 0) -> None:
        self.requests: list[Request] = []
        self.answers: deque[tuple[int, bytes]] = deque()
        self.default_body = default_body
        self.hold = threading.Event()
        self.hold.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                split = urlsplit(self.path)
                outer.requests.append(
                    Request(
                        "POST",
                        split.path,
                        split.query,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
                outer.hold.wait(30)
                status, reply = (
                    outer.answers.popleft() if outer.answers else (200, outer.default_body)
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HttpReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.hold.set()
        self._server.shutdown()
        self._server.server_close()

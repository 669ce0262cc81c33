"""The baselines of ``bench/nbiot_e2e.py``: a bare aiocoap server that answers 2.04 at
once and a bare aiohttp handler that answers 200, each in its own process, both only
counting the requests.

    python bench/nbiot_bare.py coap|http PORT
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

__all__ = ["free_udp_port", "start_bare"]


def serve_bare(kind: str, port: int) -> None:
    """A baseline server (run in its own process): answers at once, counts requests."""
    import aiocoap
    from aiocoap import resource
    from aiohttp import web

    count = 0

    class Counting(resource.Resource, resource.PathCapable):
        async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
            nonlocal count
            count += 1
            return aiocoap.Message(code=aiocoap.CHANGED)

    async def handle(request: web.Request) -> web.Response:
        nonlocal count
        await request.read()
        count += 1
        return web.Response(text="ok")

    async def main() -> None:
        if kind == "coap":
            await aiocoap.Context.create_server_context(
                Counting(), bind=("127.0.0.1", port), transports=["udp6"]
            )
        else:
            app = web.Application()
            app.router.add_post("/ctwing", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_bare(kind: str, port: int) -> subprocess.Popen[str]:
    """The ``kind`` (``coap`` or ``http``) baseline on loopback ``port``, in its own
    process (this file as a script); returns once it is ready."""
    proc = subprocess.Popen(
        [sys.executable, __file__, kind, str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def free_udp_port() -> int:
    """A UDP port on loopback that no one holds now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    serve_bare(sys.argv[1], int(sys.argv[2]))

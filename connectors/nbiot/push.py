"""The carriers' HTTP push receivers (aiohttp): CTWing at ``POST /ctwing`` (or
``/ctwing/<token>``), OneNET at ``GET /onenet`` (URL verification) and ``POST /onenet``.

A push is answered only once it is durable: 200 when its readings are in the telemetry
log, or when it was dead-lettered because it cannot be read (sending it again would not
help; its bytes are kept with the reason); 403 once a push that fails verification
(CTWing token, OneNET signature) is in the dead-letter topic, so that the platform's
console shows the failure. The work after the append is the batch's, so answers are
quick: CTWing stops pushing for a minute to a receiver that fails or is slow, and the
messages of that minute are lost.

CTWing signs nothing we can check; its subscription URL carries a secret token
(``/ctwing/<token>``), compared in constant time, when one is configured. OneNET's
URL verification echoes ``msg`` when Base64(MD5(token + nonce + msg)) equals the
``signature``; its pushes are verified in ``connectors.nbiot.platforms``.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable

from aiohttp import web

from connectors.nbiot.platforms import verify_onenet_url
from connectors.nbiot.seal import AuthError
from connectors.nbiot.uplink import Uplink

__all__ = ["push_app"]

#: A push still unanswered after this is answered 503 (the platform sends it again).
ANSWER_TIMEOUT_S = 30.0
MAX_BODY = 256 * 1024


def push_app(
    submit: Callable[[Uplink], None], ctwing_token: str | None, onenet_token: str | None
) -> web.Application:
    async def _take(request: web.Request, path: str, auth_error: str | None) -> web.Response:
        body = await request.read()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def ack() -> None:
            if not done.done():
                done.set_result(None)

        up = Uplink(
            source=f"nbiot:{path}:{request.remote}",
            payload=body,
            received_ms=int(time.time() * 1000),
            ack=ack,
            path=path,
            auth_error=auth_error,
        )
        submit(up)
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                await asyncio.shield(done)
        except TimeoutError:
            return web.Response(status=503, text="not yet durable")
        if isinstance(up.outcome, AuthError):
            return web.Response(status=403, text=str(up.outcome))
        return web.Response(status=200, text="ok")

    async def ctwing(request: web.Request) -> web.Response:
        given = request.match_info.get("token", "")
        error = None
        if ctwing_token is not None and not hmac.compare_digest(
            given.encode(), ctwing_token.encode()
        ):
            error = "CTWing push with a wrong token in its URL"
        return await _take(request, "ctwing", error)

    async def onenet(request: web.Request) -> web.Response:
        return await _take(request, "onenet", None)

    async def onenet_verify(request: web.Request) -> web.Response:
        q = request.query
        msg, nonce, signature = q.get("msg"), q.get("nonce"), q.get("signature")
        if onenet_token is None or msg is None or nonce is None or signature is None:
            return web.Response(status=403, text="verification refused")
        if not verify_onenet_url(onenet_token, msg, nonce, signature):
            return web.Response(status=403, text="signature does not verify")
        return web.Response(status=200, text=msg)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/ctwing", ctwing)
    app.router.add_post("/ctwing/{token}", ctwing)
    app.router.add_get("/onenet", onenet_verify)
    app.router.add_post("/onenet", onenet)
    return app

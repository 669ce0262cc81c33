"""The dispatcher's HTTP API and the acknowledge-link pages, on the gateway's web port.

JSON in and out (a body only as ``Content-Type: application/json``, else 415); errors
are ``{"error": "<message for people>"}`` with 400 (bad request), 401/403 (the access
rule: no token, another site's page, a Host not this server's), 404 (unknown alert or
silence) or 409 (the alert's state does not allow it: acknowledging a resolved alert,
closing a firing one).

    GET    /api/alerts                      every alert known, newest first
    POST   /api/alerts/{fingerprint}/ack    {"by": "...", "note": "..."}
    POST   /api/alerts/{fingerprint}/close  {"by": "...", "feedback": "..."}
    GET    /api/silences
    POST   /api/silences                    {"matchers": [...], "author", "comment",
                                             "starts_at" (ms, default now),
                                             "ends_at" (ms) or "duration" ("2h")}
    DELETE /api/silences/{id}               expire it now
    GET    /api/outbox                      pending per receiver, parked entries, delivery
                                            marks not stored yet (``unmarked``)
    GET    /api/history                     alerts the dispatcher let go of, newest first
    GET    /ack/{token}                     the confirm page of a signed link
    POST   /ack/{token}                     acknowledge (form field ``name``, optional)

Who may call these is the web port's one access rule (``engine.runtime.web_access``),
in front of every route: ``/api/`` like ``/metrics``; ``/ack/`` needs no login, the
signed token (checked here, ``_link``) is good for one alert until it expires
(``engine.runtime.dispatch.links``).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine.contracts.alerts import Level
from engine.dispatch.lifecycle import AlertState, LifecycleError
from engine.dispatch.silences import Silence
from engine.runtime.dispatch.links import LinkError
from engine.runtime.dispatch.service import DispatchService
from rules.durations import parse_duration_ms

__all__ = [
    "Handler",
    "alert_json",
    "error_response",
    "install_api",
    "json_number",
    "silence_json",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ServiceHandler = Callable[[web.Request, DispatchService], Awaitable[web.StreamResponse]]


def alert_json(state: AlertState, hidden: str | None) -> dict[str, Any]:
    e = state.event
    return {
        "fingerprint": state.fingerprint,
        "status": state.status,
        "level": Level(state.level).label,
        "rule_id": e.rule_id,
        "station": e.station,
        "metric": e.metric,
        "summary": e.summary,
        "value": json_number(e.value),
        "threshold": json_number(e.threshold),
        "started_at": e.started_at,
        "at": e.at,
        "received_at": state.received_at,
        "latched": state.latched,
        "hidden": hidden,
        "acknowledged": None if state.ack is None else {
            "by": state.ack.by, "at": state.ack.at, "note": state.ack.note,
        },
        "closed": None if state.closed is None else {
            "by": state.closed.by, "at": state.closed.at, "feedback": state.closed.feedback,
        },
        "labels": dict(e.labels),
    }  # fmt: skip


def json_number(x: float) -> float | None:
    """JSON has no NaN (a browser's parser refuses it): a silence or QC alert's missing
    value or threshold is null."""
    return None if math.isnan(x) else x


def silence_json(silence: Silence, state: str) -> dict[str, Any]:
    return {**silence.to_dict(), "state": state}


def error_response(status: int, message: str) -> web.Response:
    """The API's error: ``{"error": message}`` with ``status``."""
    return web.json_response({"error": message}, status=status)


_error = error_response


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object. Only ``Content-Type: application/json`` is read (else
    415): a page of another site can POST ``text/plain`` without a CORS preflight, but
    not JSON (the access rule refuses it by ``Origin`` too; this holds without one)."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            text=json.dumps({"error": "send the body as Content-Type: application/json"}),
            content_type="application/json",
        )
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"the body is not JSON: {exc}"}),
            content_type="application/json",
        ) from exc
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "the body must be a JSON object"}),
            content_type="application/json",
        )
    return data


def _text(data: dict[str, Any], name: str, *, required: bool) -> str:
    value = data.get(name, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{name}: a non-empty string is required"}),
            content_type="application/json",
        )
    return value


def install_api(
    router: web.UrlDispatcher,
    source: DispatchService | Callable[[], DispatchService | None],
    forward: Handler | None = None,
) -> None:
    """Add the routes above to ``router`` (the gateway's aiohttp app). ``source``: the
    service, or a function giving the one running now (on a Kafka worker, None while
    this worker does not own the dispatcher); then the request goes to ``forward``
    (the owner's API), or, without one, is answered 503."""

    def current() -> DispatchService | None:
        return source if isinstance(source, DispatchService) else source()

    def serving(handler: ServiceHandler) -> Handler:
        async def call(request: web.Request) -> web.StreamResponse:
            service = current()
            if service is None:
                if forward is not None:
                    return await forward(request)
                return _error(503, "this process does not run the dispatcher now")
            return await handler(request, service)

        return call

    async def act(
        service: DispatchService, fingerprint: str, action: Callable[[], Awaitable[AlertState]]
    ) -> web.Response:
        if service.dispatcher.lifecycle.get(fingerprint) is None:
            return _error(404, f"no alert {fingerprint!r}")
        try:
            state = await action()
        except LifecycleError as exc:
            return _error(409, str(exc))
        return web.json_response({"alert": alert_json(state, None)})

    async def alerts(request: web.Request, service: DispatchService) -> web.Response:
        rows = [alert_json(s, hidden) for s, hidden in service.dispatcher.alerts()]
        rows.sort(key=lambda r: -r["at"])
        return web.json_response({"alerts": rows})

    async def ack(request: web.Request, service: DispatchService) -> web.Response:
        data = await _body(request)
        by, note = _text(data, "by", required=True), _text(data, "note", required=False)
        fp = request.match_info["fingerprint"]
        return await act(service, fp, lambda: service.acknowledge(fp, by, note))

    async def close(request: web.Request, service: DispatchService) -> web.Response:
        data = await _body(request)
        by = _text(data, "by", required=True)
        feedback = _text(data, "feedback", required=True)
        fp = request.match_info["fingerprint"]
        return await act(service, fp, lambda: service.close(fp, by, feedback))

    async def silences(request: web.Request, service: DispatchService) -> web.Response:
        now = service.clock.now_ms()
        rows = service.dispatcher.silences.list_at(now)
        return web.json_response({"silences": [silence_json(s, st) for s, st in rows]})

    async def add_silence(request: web.Request, service: DispatchService) -> web.Response:
        data = await _body(request)
        now = service.clock.now_ms()
        try:
            matchers = data.get("matchers")
            if not isinstance(matchers, list) or not all(isinstance(m, str) for m in matchers):
                raise ValueError('matchers: a list of strings is required, e.g. ["station=HZ001"]')
            starts = int(data.get("starts_at", now))
            if "ends_at" in data:
                ends = int(data["ends_at"])
            elif "duration" in data:
                ends = max(starts, now) + parse_duration_ms(data["duration"])
            else:
                raise ValueError('give ends_at (ms) or duration (e.g. "2h")')
            silence = await service.add_silence(
                matchers, starts, ends,
                _text(data, "author", required=True), _text(data, "comment", required=False),
            )  # fmt: skip
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
        return web.json_response({"silence": silence_json(silence, silence.state(now))})

    async def expire_silence(request: web.Request, service: DispatchService) -> web.Response:
        try:
            silence = await service.expire_silence(request.match_info["id"])
        except KeyError as exc:
            return _error(404, str(exc.args[0]))
        now = service.clock.now_ms()
        return web.json_response({"silence": silence_json(silence, silence.state(now))})

    async def outbox(request: web.Request, service: DispatchService) -> web.Response:
        return web.json_response(
            {
                "pending": service.pending(),
                "parked": service.outbox.parked(),
                "unmarked": service.outbox.unmarked(),
                "counters": dict(service.counters),
            }
        )

    async def history(request: web.Request, service: DispatchService) -> web.Response:
        return web.json_response({"alerts": service.outbox.history()[::-1]})

    async def link_page(request: web.Request, service: DispatchService) -> web.Response:
        checked = _link(request, service)
        if isinstance(checked, web.Response):
            return checked
        state = checked
        e = state.event
        if state.status != "firing":
            return _page(200, f"{e.station}: {e.summary}", f"This alert is {state.status}.")
        form = (
            '<form method="post"><label>Your name <input name="name" autofocus></label> '
            '<button type="submit">Acknowledge</button></form>'
        )
        return _page(200, f"{e.station}: {e.summary}", form)

    async def link_ack(request: web.Request, service: DispatchService) -> web.Response:
        checked = _link(request, service)
        if isinstance(checked, web.Response):
            return checked
        form = await request.post()
        name = str(form.get("name", "")).strip() or "someone"
        fp = checked.fingerprint
        if checked.status != "firing":
            return _page(200, checked.event.summary, f"This alert is {checked.status}.")
        await service.acknowledge(fp, f"{name} (link)", "acknowledged through the link")
        return _page(200, checked.event.summary, f"Acknowledged by {html.escape(name)}.")

    def _link(request: web.Request, service: DispatchService) -> AlertState | web.Response:
        if service.links is None:
            return _page(404, "Not found", "This gateway makes no acknowledge links.")
        try:
            fp = service.links.verify(request.match_info["token"], service.clock.now_ms())
        except LinkError as exc:
            return _page(403, "Link refused", html.escape(str(exc)))
        state = service.dispatcher.lifecycle.get(fp)
        if state is None:
            return _page(404, "Not found", "This gateway does not know this alert.")
        return state

    api = [
        ("GET", "/api/alerts", alerts),
        ("POST", "/api/alerts/{fingerprint}/ack", ack),
        ("POST", "/api/alerts/{fingerprint}/close", close),
        ("GET", "/api/silences", silences),
        ("POST", "/api/silences", add_silence),
        ("DELETE", "/api/silences/{id}", expire_silence),
        ("GET", "/api/outbox", outbox),
        ("GET", "/api/history", history),
    ]
    for method, path, handler in api:
        router.add_route(method, path, serving(handler))
    router.add_route("GET", "/ack/{token}", serving(link_page))
    router.add_route("POST", "/ack/{token}", serving(link_ack))


def _page(status: int, title: str, body: str) -> web.Response:
    text = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        '<meta name="viewport" content="width=device-width">'
        f"<title>Vigil</title></head><body><h1>{html.escape(title)}</h1><p>{body}</p>"
        "</body></html>"
    )
    return web.Response(status=status, text=text, content_type="text/html")

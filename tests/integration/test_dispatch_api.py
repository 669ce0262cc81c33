"""The dispatcher's API (``engine/runtime/dispatch/api.py``) served by aiohttp on a real
port, in front of a real ``DispatchService`` (outbox in tmp, manual clock), called over
HTTP and through the ``vigil alerts`` CLI.

The web port's access rule (``engine.runtime.web_access.protect``) stands in front, as
on the gateway; it reads the caller's address. To be a caller that is not loopback, the
server listens on this machine's own non-loopback address and the client connects to
it (the kernel then gives the connection that address as its source); a machine
without one falls back to a request whose remote is set to a documentation address
before the rule sees it. Either way the check that runs is the gateway's own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from engine.dispatch.clock import ManualClock
from engine.runtime.dispatch.api import install_api
from engine.runtime.dispatch.outbox import Outbox
from engine.runtime.dispatch.service import DispatchService
from engine.runtime.dispatch.wiring import build_receivers
from engine.runtime.web_access import protect
from tests.integration.http_receiver import HttpReceiver
from tests.unit.dispatch_support import MIN, T0, config, event

ROUTING = """
version: 1
receivers:
  - {name: duty, type: webhook, url: "URL/duty", secret_env: HOOK_SECRET,
     retry: {attempts: 1}, timeout_s: 5}
route: {receivers: [duty], group_by: [basin], group_wait: 0s, group_interval: 1m}
"""


def non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


@web.middleware
async def _from_afar(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.headers.get("X-Test-From-Afar"):
        request = request.clone(remote="203.0.113.7")
    return await handler(request)  # type: ignore[no-any-return]


class Api:
    """The service and its API on loopback and, for callers from afar, ``far``."""

    def __init__(
        self, service: DispatchService, clock: ManualClock, loop_url: str, far_url: str
    ) -> None:
        self.service, self.clock, self.url, self.far_url = service, clock, loop_url, far_url

    async def far(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**kw.pop("headers", {}), **({} if self.real_far else {"X-Test-From-Afar": "1"})}
        async with httpx.AsyncClient() as client:
            return await client.request(method, self.far_url + path, headers=headers, **kw)

    async def near(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.request(method, self.url + path, **kw)

    real_far = True


@asynccontextmanager
async def serving(tmp: Path, hook_url: str, token: str | None) -> AsyncIterator[Api]:
    clock = ManualClock(T0)
    cfg = config(ROUTING.replace("URL", hook_url))
    service = DispatchService(
        cfg, Outbox(tmp / "dispatch"), build_receivers(cfg), clock,
        retry_initial_s=0.05, retry_max_s=0.05,
    )  # fmt: skip
    far = non_loopback_address()
    app = web.Application()
    protect(app, token)
    if not far:
        app.middlewares.insert(0, _from_afar)  # before the rule reads the address
    install_api(app.router, service)
    runner = web.AppRunner(app)
    await runner.setup()
    hosts = ["127.0.0.1", far] if far else ["127.0.0.1"]
    sites = [web.TCPSite(runner, host, 0) for host in hosts]
    for site in sites:
        await site.start()
    ports = [s._server.sockets[0].getsockname()[1] for s in sites]  # type: ignore[union-attr]
    api = Api(service, clock, f"http://127.0.0.1:{ports[0]}", f"http://{hosts[-1]}:{ports[-1]}")
    api.real_far = far is not None
    delivery = asyncio.create_task(service.deliver_forever())
    try:
        yield api
    finally:
        delivery.cancel()
        await service.stop(None)
        await runner.cleanup()


def run(tmp: Path, token: str | None, body: Callable[[Api], Awaitable[None]]) -> None:
    async def main() -> None:
        with HttpReceiver() as hooks:
            async with serving(tmp, hooks.url, token) as api:
                await body(api)

    asyncio.run(main())


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s")


async def vigil_alerts(url: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.tools.cli", "alerts", "--url", url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert b"HTTP Request" not in err  # the CLI's output is its answer, not httpx's log
    return proc.returncode or 0, out.decode() + err.decode()


def test_callers_from_afar_need_the_token(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        assert (await api.far("GET", "/api/alerts")).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await api.far("GET", "/api/alerts", headers=wrong)).status_code == 401
        assert (await api.far("DELETE", "/api/silences/s1", headers=wrong)).status_code == 401
        right = {"Authorization": "Bearer t0ken"}
        assert (await api.far("GET", "/api/alerts", headers=right)).status_code == 200
        # A token, once set, is asked of loopback callers too (as /metrics always did).
        assert (await api.near("GET", "/api/alerts")).status_code == 401
        assert (await api.near("GET", "/api/alerts", headers=right)).status_code == 200

    run(tmp_path, "t0ken", body)


def test_without_a_configured_token_callers_from_afar_are_refused(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        for headers in ({}, {"Authorization": "Bearer anything"}):
            got = await api.far("GET", "/api/outbox", headers=headers)
            assert got.status_code == 403
            assert "loopback only" in got.json()["error"]
        assert (await api.near("GET", "/api/outbox")).status_code == 200

    run(tmp_path, None, body)


def test_close_through_the_api_and_the_cli(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        s = api.service
        s.receive([event("HZ001", "red", at=T0), event("HZ002", "yellow", at=T0)])
        await s.tick()
        fp1, fp2 = (a.fingerprint for a, _ in s.dispatcher.alerts())
        close = {"by": "Li", "feedback": "sandbags held"}
        firing = await api.near("POST", f"/api/alerts/{fp1}/close", json=close)
        assert firing.status_code == 409 and "still firing" in firing.json()["error"]
        unknown = await api.near("POST", "/api/alerts/nope/close", json=close)
        assert unknown.status_code == 404
        no_feedback = await api.near("POST", f"/api/alerts/{fp2}/close", json={"by": "Li"})
        assert no_feedback.status_code == 400
        # The water falls; HZ001's red latches until someone takes it.
        api.clock.advance(MIN)
        s.receive([event("HZ001", "none", "red", at=T0 + MIN),
                   event("HZ002", "none", "yellow", at=T0 + MIN)])  # fmt: skip
        await s.tick()
        assert (await api.near("POST", f"/api/alerts/{fp1}/close", json=close)).status_code == 409
        await s.acknowledge(fp1, "Li")
        done = await api.near("POST", f"/api/alerts/{fp1}/close", json=close)
        assert done.status_code == 200
        assert done.json()["alert"]["closed"]["feedback"] == "sandbags held"
        rc, out = await vigil_alerts(api.url, "close", fp2[:8], "--by", "Wang",
                                     "--feedback", "gauge checked, no damage")  # fmt: skip
        assert rc == 0, out
        assert out.startswith(f"{fp2}: closed by Wang at ")
        rc, out = await vigil_alerts(api.url, "close", fp2[:8], "--by", "x", "--feedback", "y")
        assert rc == 0 and "closed by Wang" in out  # closing again keeps the first
        alerts = {
            a["fingerprint"]: a for a in (await api.near("GET", "/api/alerts")).json()["alerts"]
        }
        assert alerts[fp2]["status"] == "closed"
        assert alerts[fp2]["closed"]["feedback"] == "gauge checked, no damage"
        # Stored before the answer: the store's state has both closures.
        stored = s.outbox.snapshot()
        assert stored is not None
        assert stored["alerts"][fp1]["closed"]["by"] == "Li"
        assert stored["alerts"][fp2]["closed"]["by"] == "Wang"

    run(tmp_path, None, body)


def test_silences_are_expired_through_the_api_and_the_cli(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        s = api.service
        for station in ("HZ001", "HZ002"):
            add = {"matchers": [f"station={station}"], "duration": "2h", "author": "ops"}
            assert (await api.near("POST", "/api/silences", json=add)).status_code == 200
        s.receive([event("HZ001", "yellow", at=T0), event("HZ002", "yellow", at=T0)])
        await s.tick()
        hidden = {a.event.station: h for a, h in s.dispatcher.alerts()}
        assert hidden == {"HZ001": "silenced by s1", "HZ002": "silenced by s2"}

        gone = await api.near("DELETE", "/api/silences/s1")
        assert gone.status_code == 200 and gone.json()["silence"]["state"] == "expired"
        assert (await api.near("DELETE", "/api/silences/s9")).status_code == 404
        rc, out = await vigil_alerts(api.url, "silences", "--expire", "s2")
        assert rc == 0 and out.strip() == "s2: expired", out
        listed = (await api.near("GET", "/api/silences")).json()["silences"]
        assert {x["id"]: x["state"] for x in listed} == {"s1": "expired", "s2": "expired"}
        assert all(h is None for _, h in s.dispatcher.alerts())
        stored = s.outbox.snapshot()
        assert stored is not None
        assert all(x["ends_at"] <= s.clock.now_ms() for x in stored["silences"]["silences"])

    run(tmp_path, None, body)


def test_a_permanently_refused_notification_is_parked_and_listed(tmp_path: Path) -> None:
    async def main() -> None:
        with HttpReceiver() as hooks:
            hooks.answers.append((400, b'{"error": "bad body"}'))
            async with serving(tmp_path, hooks.url, None) as api:
                s = api.service
                s.receive([event("HZ001", "yellow", at=T0)])
                await s.tick()  # the first message: refused for good
                api.clock.advance(MIN)
                s.receive([event("HZ001", "orange", "yellow", at=T0 + MIN)])
                await s.tick()  # the next one goes: the loop did not stop
                for _ in range(1000):
                    outbox = (await api.near("GET", "/api/outbox")).json()
                    if outbox["parked"] and not outbox["pending"]["duty"]:
                        break
                    await asyncio.sleep(0.01)
                [parked] = outbox["parked"]
                assert parked["notification"]["key"].endswith(":1")
                assert "400" in parked["error"]
                assert outbox["counters"]["parked"] == 1
                assert outbox["counters"]["delivered"] == 1
                assert [r.json()["key"][-2:] for r in hooks.requests] == [":1", ":2"]
                assert s.outbox.parked()[0]["notification"]["key"] == parked["notification"]["key"]

    asyncio.run(main())


def test_history_lists_the_alerts_the_state_let_go_of(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        s = api.service
        for i, station in enumerate(("HZ001", "HZ002")):
            s.receive([event(station, "yellow", at=T0 + i)])
            await s.tick()
            api.clock.advance(MIN)
            s.receive([event(station, "none", "yellow", at=T0 + MIN + i)])
            await s.tick()
            api.clock.advance(MIN)
        assert (await api.near("GET", "/api/history")).json() == {"alerts": []}
        api.clock.advance(25 * 60 * MIN)  # past the default day
        await s.tick()
        old = (await api.near("GET", "/api/history")).json()["alerts"]
        assert [a["event"]["station"] for a in old] == ["HZ002", "HZ001"]  # newest first
        assert (await api.near("GET", "/api/alerts")).json() == {"alerts": []}
        assert (await api.far("GET", "/api/history")).status_code == 403

    run(tmp_path, None, body)

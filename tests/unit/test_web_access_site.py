"""The names the web port's access rule accepts beyond a request's own
(``engine.runtime.web_access.Site``): behind a proxy at ``dispatch.public_url`` the
console's requests carry that origin and that host; ``web.bind`` is a name of the
server too, ``0.0.0.0`` is not. (Over a real socket: tests/integration/test_web_access.py.)"""

from __future__ import annotations

from unittest import mock

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from engine.runtime.web_access import Site, decide


def _request(method: str, headers: dict[str, str]) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: {
        "peername": ("127.0.0.1", 50000),
        "peercert": None,
    }.get(name, default)
    return make_mocked_request(method, "/api/silences", headers=headers, transport=transport)


def _status(method: str, headers: dict[str, str], site: Site) -> int:
    refused = decide(_request(method, headers), None, site)
    return 0 if refused is None else refused.status


def test_the_public_url_origin_and_host_pass_behind_a_proxy() -> None:
    site = Site("127.0.0.1", "https://alerts.example.org:443/vigil")
    assert site.origins == frozenset({"https://alerts.example.org"})
    proxied = {"Host": "alerts.example.org", "Origin": "https://alerts.example.org"}
    assert _status("POST", proxied, site) == 0
    # Another site's page, and the same page on another port, are refused.
    assert _status("POST", {**proxied, "Origin": "https://evil.example"}, site) == 403
    assert _status("POST", {**proxied, "Origin": "https://alerts.example.org:8443"}, site) == 403
    # Reading is not a change: no Origin check, but the Host check still holds.
    assert _status("GET", {**proxied, "Origin": "https://evil.example"}, site) == 0
    assert _status("GET", {"Host": "evil.example"}, site) == 403


def test_bind_names_the_server_unless_it_is_every_address() -> None:
    assert "gw.lan" in Site("gw.lan").hosts
    assert Site("0.0.0.0").hosts == Site("::").hosts == frozenset({"localhost"})
    for host in ("127.0.0.1:6066", "[::1]:6066", "localhost:6066", "LOCALHOST"):
        assert _status("GET", {"Host": host}, Site()) == 0, host
    assert _status("GET", {"Host": "0.0.0.0:6066"}, Site("0.0.0.0")) == 403

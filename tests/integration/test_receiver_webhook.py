"""The webhook receiver against a real HTTP server on loopback: Vigil's signed JSON, the
WeCom and DingTalk robot bodies, and retries with backoff (an injected sleep: no test
waits for one)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Iterator

import pytest

from connectors.mqtt.mosquitto import free_port
from connectors.sinks.receivers import build_receiver
from engine.contracts.notification import DeliveryError
from tests.integration.http_receiver import HttpReceiver
from tests.notifications import RecordingSleep, flood

SECRET = "s3cret-shared-with-the-receiver"


@pytest.fixture
def server() -> Iterator[HttpReceiver]:
    with HttpReceiver() as s:
        yield s


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_TEST_HOOK_SECRET", SECRET)


def _send(config: dict[str, object], n: object, sleep: RecordingSleep) -> None:
    async def run() -> None:
        receiver = build_receiver("duty", config, sleep=sleep)
        try:
            await receiver.send(n)  # type: ignore[arg-type]
        finally:
            await receiver.aclose()

    asyncio.run(run())


def _vigil(url: str, **kw: object) -> dict[str, object]:
    return {"type": "webhook", "url": url, "secret_env": "VIGIL_TEST_HOOK_SECRET", **kw}


def test_vigil_body_is_signed_with_the_shared_secret_and_keyed(server: HttpReceiver) -> None:
    n = flood(key="outbox-42")
    _send(_vigil(server.url + "/hook"), n, RecordingSleep())

    [req] = server.requests
    assert req.path == "/hook"
    expected = "sha256=" + hmac.new(SECRET.encode(), req.body, hashlib.sha256).hexdigest()
    assert req.headers["x-vigil-signature"] == expected
    assert req.headers["idempotency-key"] == "outbox-42"
    assert req.headers["content-type"] == "application/json; charset=utf-8"
    body = req.json()
    assert body["version"] == 1
    assert body["key"] == "outbox-42"
    assert body["receiver"] == "duty"
    assert (body["status"], body["level"]) == ("firing", "red")
    assert body["group_labels"] == {"basin": "demo_river"}
    assert body["created_at"] == n.created_at
    assert [a["station"] for a in body["alerts"]] == ["HZ002", "HZ001", "HZ003"]
    assert body["alerts"][0] == {
        **n.alerts[0].to_dict(),
        "ack_url": n.links[n.alerts[0].fingerprint],
        "latched": None,  # firing on its data, not held by a latch
    }
    assert body["alerts"][1]["ack_url"] is None
    assert body["links"] == n.links
    assert "示例二号站" in req.body.decode()  # UTF-8, not \\u escapes


def test_retryable_failures_are_retried_with_backoff_then_succeed(server: HttpReceiver) -> None:
    server.answers.extend([(503, b"busy"), (500, b"oops"), (429, b"slow down")])
    sleep = RecordingSleep()
    _send(_vigil(server.url, retry={"attempts": 5, "initial_s": 0.5, "factor": 2}), flood(), sleep)

    assert len(server.requests) == 4
    assert len({r.body for r in server.requests}) == 1  # the same body, signature and key
    assert {r.headers["idempotency-key"] for r in server.requests} == {"out-1"}
    assert sleep.delays == [0.5, 1.0, 2.0]


def test_retries_give_up_as_a_retryable_error(server: HttpReceiver) -> None:
    server.answers.extend([(502, b"")] * 3)
    sleep = RecordingSleep()
    with pytest.raises(DeliveryError) as err:
        _send(
            _vigil(server.url, retry={"attempts": 3, "initial_s": 1, "max_s": 1.5}), flood(), sleep
        )
    assert err.value.retryable is True
    assert str(err.value) == "receiver 'duty': HTTP 502: ''"
    assert len(server.requests) == 3
    assert sleep.delays == [1.0, 1.5]


def test_a_4xx_refusal_is_permanent_and_not_retried(server: HttpReceiver) -> None:
    server.answers.append((401, b'{"error": "bad signature"}'))
    sleep = RecordingSleep()
    with pytest.raises(DeliveryError) as err:
        _send(_vigil(server.url), flood(), sleep)
    assert err.value.retryable is False
    assert str(err.value) == """receiver 'duty': HTTP 401: '{"error": "bad signature"}'"""
    assert len(server.requests) == 1
    assert sleep.delays == []


def test_connection_refused_is_retried_then_retryable() -> None:
    sleep = RecordingSleep()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(DeliveryError) as err:
        _send(_vigil(url, retry={"attempts": 2, "initial_s": 0.25}), flood(), sleep)
    assert err.value.retryable is True
    assert "ConnectError" in str(err.value)
    assert sleep.delays == [0.25]


def test_a_timeout_is_retryable(server: HttpReceiver) -> None:
    server.hold.clear()  # the server reads the request and does not answer
    with pytest.raises(DeliveryError) as err:
        _send(_vigil(server.url, timeout_s=0.2, retry={"attempts": 1}), flood(), RecordingSleep())
    assert err.value.retryable is True
    assert "ReadTimeout" in str(err.value)


def test_wecom_robot_markdown_body_and_errcodes(
    server: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_TEST_WECOM_URL", server.url + "/cgi-bin/webhook/send?key=k-123")
    config = {"type": "webhook", "url_env": "VIGIL_TEST_WECOM_URL", "template": "wecom"}
    server.answers.extend(
        [
            (200, b'{"errcode":45009,"errmsg":"api freq out of limit"}'),
            (200, b'{"errcode":0,"errmsg":"ok"}'),
        ]
    )
    sleep = RecordingSleep()
    _send(config, flood(), sleep)

    assert len(server.requests) == 2 and sleep.delays == [0.5]
    req = server.requests[-1]
    assert (req.path, req.query) == ("/cgi-bin/webhook/send", {"key": "k-123"})
    assert "x-vigil-signature" not in req.headers
    body = req.json()
    assert body["msgtype"] == "markdown"
    content = body["markdown"]["content"]
    assert content.startswith(
        '### <font color="warning">'
        "【红色预警】demo_river:示例二号站水位 4.92 m,红色预警(共 3 条)</font>"
    )
    assert "[确认](https://vigil.example/ack/abc?sig=1)" in content
    assert len(content.encode()) <= 4096

    server.answers.append((200, b'{"errcode":93000,"errmsg":"invalid webhook url"}'))
    with pytest.raises(DeliveryError) as err:
        _send(config, flood(), RecordingSleep())
    assert err.value.retryable is False
    assert str(err.value) == "receiver 'duty': wecom errcode 93000: invalid webhook url"


def test_wecom_text_is_cut_to_its_byte_limit_and_mentions(server: HttpReceiver) -> None:
    server.default_body = b'{"errcode":0,"errmsg":"ok"}'
    many = flood(note="十二条因限流暂缓发送," * 200)
    config = {
        "type": "webhook",
        "url": server.url,
        "template": "wecom",
        "msgtype": "text",
        "mention_mobiles": ["13800001111"],
    }
    _send(config, many, RecordingSleep())
    text = server.requests[0].json()["text"]
    assert len(text["content"].encode()) <= 2048
    assert text["content"].endswith("\n…")
    assert text["mentioned_mobile_list"] == ["13800001111"]


def test_dingtalk_robot_is_signed_per_dingtalk_scheme(
    server: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "SECd1ngt4lk+/=secret"
    monkeypatch.setenv("VIGIL_TEST_DING_SECRET", secret)
    server.default_body = b'{"errcode":0,"errmsg":"ok"}'
    config = {
        "type": "webhook",
        "url": server.url + "/robot/send?access_token=tok",
        "template": "dingtalk",
        "secret_env": "VIGIL_TEST_DING_SECRET",
        "lang": "en",
        "mention_mobiles": ["13800001111"],
    }
    _send(config, flood(), RecordingSleep())

    [req] = server.requests
    query = req.query
    assert query["access_token"] == "tok"
    # DingTalk: sign = urlencode(base64(HMAC-SHA256(key=secret, f"{timestamp}\n{secret}")))
    string_to_sign = f"{query['timestamp']}\n{secret}".encode()
    digest = hmac.new(secret.encode(), string_to_sign, hashlib.sha256).digest()
    assert query["sign"] == base64.b64encode(digest).decode()
    assert "+" not in req.raw_query  # '+' in Base64 must travel as %2B
    body = req.json()
    assert body["msgtype"] == "markdown"
    assert body["markdown"]["title"] == (
        "[RED warning] demo_river: 示例二号站水位 4.92 m,红色预警 (+2 more)"
    )
    assert body["markdown"]["text"].endswith(" @13800001111")
    assert body["at"] == {"atMobiles": ["13800001111"], "isAtAll": False}

    server.default_body = json.dumps({"errcode": 310000, "errmsg": "sign not match"}).encode()
    with pytest.raises(DeliveryError) as err:
        _send(config, flood(), RecordingSleep())
    assert err.value.retryable is False

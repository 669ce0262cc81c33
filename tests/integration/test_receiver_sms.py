"""The SMS receiver against a real HTTP receiver on loopback standing in for a Chinese
SMS provider (template id + parameters, signature, out-id, success code)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace

import pytest

from connectors.sinks.receivers import build_receiver
from engine.contracts.notification import DeliveryError, Notification
from tests.integration.http_receiver import HttpReceiver
from tests.notifications import RecordingSleep, all_clear, flood

PHONES = ["13800001111", "13800002222", "+8613800003333"]


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpReceiver]:
    monkeypatch.setenv("VIGIL_TEST_SMS_TOKEN", "tok-456")
    with HttpReceiver(default_body=b'{"Code": "OK", "Message": "OK"}') as server:
        yield server


def _aliyun_like(url: str, **kw: object) -> dict[str, object]:
    """Field names, JSON-string params and success code as Aliyun's SendSms has them."""
    return {
        "type": "sms",
        "url": url + "/sms/send",
        "token_env": "VIGIL_TEST_SMS_TOKEN",
        "sign_name": "示例水文局",
        "templates": {"firing": "SMS_100001", "resolved": "SMS_100002"},
        "template_text": {
            "firing": "${where}${level}:${summary},共${count}条,开始于${since},请及时处置。",
            "resolved": "${where}预警已解除:${summary}。",
        },
        "params": {
            "where": "where",
            "level": "level",
            "summary": "summary",
            "count": "count",
            "since": "since",
        },
        "fields": {
            "phones": "PhoneNumbers",
            "template": "TemplateCode",
            "params": "TemplateParam",
            "sign": "SignName",
            "key": "OutId",
        },
        "phones_as": "comma",
        "params_as": "json_string",
        "recipients": PHONES,
        "max_segments": 2,
        "success_field": "Code",
        "success_value": "OK",
        "retry_values": ["isv.BUSINESS_LIMIT_CONTROL"],
        **kw,
    }


def _send(config: dict[str, object], n: Notification, sleep: RecordingSleep | None = None) -> None:
    async def run() -> None:
        receiver = build_receiver("sms", config, sleep=sleep or RecordingSleep())
        try:
            await receiver.send(n)
        finally:
            await receiver.aclose()

    asyncio.run(run())


def test_template_request_reaches_the_provider(provider: HttpReceiver) -> None:
    _send(_aliyun_like(provider.url), flood(key="outbox-9"))

    [req] = provider.requests
    assert req.path == "/sms/send"
    assert req.headers["authorization"] == "Bearer tok-456"
    assert req.headers["idempotency-key"] == "outbox-9"
    body = req.json()
    assert body["PhoneNumbers"] == "13800001111,13800002222,+8613800003333"
    assert body["TemplateCode"] == "SMS_100001"
    assert body["SignName"] == "示例水文局"
    assert body["OutId"] == "outbox-9"
    params = json.loads(body["TemplateParam"])
    assert params == {
        "where": "demo_river",
        "level": "红色预警",
        "summary": "示例二号站水位 4.92 m,红色预警",
        "count": "3",
        "since": "07-01 08:00",
    }


def test_all_clear_uses_the_resolved_template(provider: HttpReceiver) -> None:
    _send(_aliyun_like(provider.url), all_clear())
    body = provider.requests[0].json()
    assert body["TemplateCode"] == "SMS_100002"
    assert json.loads(body["TemplateParam"])["level"] == "解除"


def test_batches_of_recipients_and_a_retry_resends_only_the_failed_batch(
    provider: HttpReceiver,
) -> None:
    provider.answers.extend(
        [
            (200, b'{"Code": "OK"}'),  # batch 0
            (503, b"gateway busy"),  # batch 1, first try
            (200, b'{"Code": "isv.BUSINESS_LIMIT_CONTROL"}'),  # batch 1, rate limited
        ]
    )
    sleep = RecordingSleep()
    config = _aliyun_like(provider.url, batch_size=2, phones_as="list", params_as="list", fields={})
    _send(config, flood(key="k"), sleep)

    bodies = [r.json() for r in provider.requests]
    assert [b["out_id"] for b in bodies] == ["k#0", "k#1", "k#1", "k#1"]
    assert [b["phones"] for b in bodies] == [PHONES[:2], PHONES[2:], PHONES[2:], PHONES[2:]]
    assert bodies[0]["params"][:2] == ["demo_river", "红色预警"]  # in ``params`` order
    assert sleep.delays == [0.5, 1.0]


def test_a_provider_refusal_is_permanent(provider: HttpReceiver) -> None:
    provider.answers.append((200, b'{"Code": "isv.SMS_TEMPLATE_ILLEGAL"}'))
    with pytest.raises(DeliveryError) as err:
        _send(_aliyun_like(provider.url), flood())
    assert err.value.retryable is False
    assert str(err.value) == (
        "receiver 'sms': provider refused (Code = 'isv.SMS_TEMPLATE_ILLEGAL'):"
        """ '{"Code": "isv.SMS_TEMPLATE_ILLEGAL"}'"""
    )
    assert len(provider.requests) == 1


def test_a_long_group_is_cut_to_the_segment_limit(provider: HttpReceiver) -> None:
    n = flood()
    worst = replace(n.alerts[0], summary="示例二号站水位持续上涨" * 10)
    long = replace(n, alerts=(worst, *n.alerts[1:]))
    config = _aliyun_like(provider.url, max_param_chars=35, max_segments=1)
    _send(config, long)
    params = json.loads(provider.requests[0].json()["TemplateParam"])
    text = (
        "【示例水文局】"
        + "{where}{level}:{summary},共{count}条,开始于{since},请及时处置。".format(**params)
    )
    assert len(text) == 70  # one segment, filled
    assert params["summary"].endswith("…")

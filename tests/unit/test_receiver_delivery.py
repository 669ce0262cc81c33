"""Signing, the retry loop, the robots' answers and the SMS length rules, without a
server (the integration tests send the same through real ones)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from dataclasses import replace

import pytest

from connectors.sinks.common import Backoff, with_retries
from connectors.sinks.robots import dingtalk_sign, robot_refusal
from connectors.sinks.sms import SmsConfig, SmsReceiver, fill_params, segments
from connectors.sinks.webhook import sign_body
from engine.contracts.notification import DeliveryError
from tests.notifications import RecordingSleep, all_clear, flood


def test_vigil_signature_is_hex_hmac_sha256_of_the_body() -> None:
    body = '{"key":"k","level":"red","站":"HZ001"}'.encode()
    expected = hmac.new(b"secret", body, hashlib.sha256).hexdigest()
    assert sign_body("secret", body) == f"sha256={expected}"


def test_dingtalk_sign_is_base64_hmac_of_timestamp_newline_secret() -> None:
    secret, ts = "SEC0123456789abcdef", 1_719_792_000_000
    digest = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    assert dingtalk_sign(secret, ts) == base64.b64encode(digest).decode()


def test_backoff_delays() -> None:
    assert Backoff().delays() == [0.5, 1.0, 2.0]
    assert Backoff(attempts=6, initial_s=1, factor=3, max_s=20).delays() == [1, 3, 9, 20, 20]
    assert Backoff(attempts=1).delays() == []


def _run(failures: list[DeliveryError], backoff: Backoff) -> tuple[int, RecordingSleep]:
    calls = 0
    sleep = RecordingSleep()

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)

    asyncio.run(with_retries("r", attempt, backoff, sleep))
    return calls, sleep


def test_with_retries_retries_retryable_errors_only() -> None:
    later = DeliveryError("r", "503", retryable=True)
    calls, sleep = _run([later, later], Backoff(attempts=3))
    assert (calls, sleep.delays) == (3, [0.5, 1.0])

    never = DeliveryError("r", "401", retryable=False)
    with pytest.raises(DeliveryError) as err:
        _run([later, never], Backoff(attempts=5))
    assert err.value is never

    with pytest.raises(DeliveryError) as err:
        _run([later, later, later], Backoff(attempts=3))
    assert err.value.retryable is True


def test_robot_answers() -> None:
    assert robot_refusal("wecom", {"errcode": 0, "errmsg": "ok"}) is None
    assert robot_refusal("wecom", {"errcode": 45009, "errmsg": "freq"}) == (
        "wecom errcode 45009: freq",
        True,
    )
    assert robot_refusal("dingtalk", {"errcode": 130101, "errmsg": "too fast"}) == (
        "dingtalk errcode 130101: too fast",
        True,
    )
    assert robot_refusal("dingtalk", {"errcode": 310000, "errmsg": "sign not match"}) == (
        "dingtalk errcode 310000: sign not match",
        False,
    )
    assert robot_refusal("wecom", "<html>proxy</html>") == (
        "not a wecom robot's answer: '<html>proxy</html>'",
        False,
    )


def test_segments_per_ucs2_rules() -> None:
    assert [segments(n) for n in (0, 70, 71, 134, 135, 201, 202)] == [1, 1, 2, 2, 3, 3, 4]


def _sms(**kw: object) -> SmsConfig:
    base: dict[str, object] = {
        "type": "sms",
        "url": "http://127.0.0.1:9/",
        "templates": {"firing": "T1", "resolved": "T2"},
        "params": {"s": "station", "l": "level", "t": "summary", "b": "label:district"},
        "recipients": ["13800001111"],
    }
    return SmsConfig.model_validate({**base, **kw})


def test_sms_params_are_cut_to_max_param_chars() -> None:
    values = fill_params(flood(), _sms(max_param_chars=8))
    assert values == {"s": "HZ002", "l": "红色预警", "t": "示例二号站水位…", "b": "西湖区"}
    assert fill_params(all_clear(), _sms())["l"] == "解除"


def test_sms_params_are_shortened_until_the_message_fits() -> None:
    n = flood()
    long = replace(n, alerts=(replace(n.alerts[0], summary="水" * 200), *n.alerts[1:]))
    config = _sms(
        sign_name="示例水文局",
        template_text={"firing": "${b}${s}${l}:${t}", "resolved": "${s}解除"},
        max_param_chars=500,
        max_segments=2,
    )
    values = fill_params(long, config)
    assert len(config.message("firing", values)) == 134  # two segments of 67, full
    assert values["t"] == "水" * (134 - len("【示例水文局】西湖区HZ002红色预警:") - 1) + "…"


def test_sms_requests_in_batches_with_out_ids() -> None:
    config = _sms(recipients=[f"1380000{i:04d}" for i in range(5)], batch_size=2)
    requests = SmsReceiver("sms", config).requests(flood(key="k"))
    assert [out_id for out_id, _ in requests] == ["k#0", "k#1", "k#2"]
    assert [len(body["phones"]) for _, body in requests] == [2, 2, 1]
    assert requests[0][1]["template_id"] == "T1" and requests[0][1]["out_id"] == "k#0"

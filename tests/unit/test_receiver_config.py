"""Receiver configs: validated once, errors that name the receiver and the field,
secrets only from the environment."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.sinks.email import EmailReceiver
from connectors.sinks.mqtt_broadcast import MqttBroadcastReceiver
from connectors.sinks.receivers import ReceiverConfigError, build_receiver, parse_config
from connectors.sinks.sms import SmsReceiver
from connectors.sinks.webhook import WebhookReceiver


def _error(mapping: Any) -> str:
    with pytest.raises(ReceiverConfigError) as err:
        build_receiver("duty", mapping)
    return str(err.value)


SMS = {
    "type": "sms",
    "url": "http://127.0.0.1:9/sms",
    "templates": {"firing": "T1", "resolved": "T2"},
    "params": {"lvl": "level"},
    "recipients": ["13800001111"],
}


def test_unknown_type() -> None:
    assert _error({"type": "fax"}) == (
        "receiver 'duty': type: expected one of webhook, email, sms, mqtt, got 'fax'"
    )
    assert _error(["webhook"]) == "receiver 'duty': expected a mapping, got list"


def test_webhook_errors() -> None:
    assert _error({"type": "webhook"}) == "receiver 'duty': give exactly one of url and url_env"
    assert _error({"type": "webhook", "url": "http://127.0.0.1/h"}) == (
        "receiver 'duty': template vigil signs every body: set secret_env"
    )
    assert _error({"type": "webhook", "url_env": "U", "template": "wecom", "secret_env": "S"}) == (
        "receiver 'duty': WeCom robots have no signing; the key in url_env authenticates"
    )
    assert _error(
        {"type": "webhook", "url": "http://127.0.0.1/h", "secret_env": "S", "timeout_s": 0, "x": 1}
    ) == (
        "receiver 'duty': timeout_s: Input should be greater than 0\n"
        "receiver 'duty': x: Extra inputs are not permitted"
    )


def test_secrets_come_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIL_UNSET_SECRET", raising=False)
    config = {"type": "webhook", "url": "http://127.0.0.1/h", "secret_env": "VIGIL_UNSET_SECRET"}
    assert _error(config) == (
        "receiver 'duty': secret_env: environment variable VIGIL_UNSET_SECRET is not set or empty"
    )
    assert _error({**config, "secret": "inline"}).endswith("secret: Extra inputs are not permitted")
    monkeypatch.setenv("VIGIL_UNSET_SECRET", "x")
    assert isinstance(build_receiver("duty", config), WebhookReceiver)


def test_email_errors() -> None:
    base = {"type": "email", "host": "smtp.example", "from": "v@x.cn", "to": ["a@x.cn"]}
    assert _error({**base, "to": []}) == (
        "receiver 'duty': to: Tuple should have at least 1 item after validation, not 0"
    )
    assert _error({**base, "username": "v"}) == (
        "receiver 'duty': give both username and password_env, or neither"
    )
    assert _error({**base, "username": "v", "password_env": "P", "security": "none"}) == (
        "receiver 'duty': security none would send the password in clear; use starttls"
    )
    assert _error({**base, "timezone": "Asia/Beijing"}) == (
        "receiver 'duty': timezone: unknown time zone 'Asia/Beijing' (e.g. 'Asia/Shanghai', 'UTC')"
    )
    assert isinstance(build_receiver("duty", base), EmailReceiver)


def test_sms_errors() -> None:
    assert isinstance(build_receiver("duty", SMS), SmsReceiver)
    assert _error({**SMS, "templates": {"firing": "T1"}}) == (
        "receiver 'duty': templates: give a template id for ['resolved']"
    )
    assert _error({**SMS, "params": {"lvl": "levle"}}) == (
        "receiver 'duty': params.lvl: unknown source 'levle' (one of count, level, line,"
        " link, since, station, summary, threshold, value, where, label:NAME)"
    )
    assert _error({**SMS, "recipients": ["138-0000"]}) == (
        "receiver 'duty': recipients: '138-0000' is not a phone number"
    )
    assert _error({**SMS, "template_text": {"firing": "${lvl}${who}"}}) == (
        "receiver 'duty': template_text.firing: ${who} is not in params"
    )
    assert _error({**SMS, "sign_name": "水文局", "template_text": {"firing": "很长" * 40}}) == (
        "receiver 'duty': template_text.firing: 85 characters with every value empty,"
        " more than 1 segment(s)"
    )


def test_mqtt_errors() -> None:
    assert isinstance(build_receiver("duty", {"type": "mqtt"}), MqttBroadcastReceiver)
    assert _error({"type": "mqtt", "level_topic": "vigil/level"}) == (
        "receiver 'duty': level_topic: must contain {station}"
    )
    assert _error({"type": "mqtt", "alert_topic": "vigil/{stn}"}) == (
        "receiver 'duty': alert_topic: bad placeholder 'stn'"
        " (use ('station', 'rule_id', 'metric', 'level', 'fingerprint'))"
    )
    assert _error({"type": "mqtt", "alert_topic": "vigil/#"}) == (
        "receiver 'duty': alert_topic: no wildcards (+, #) in a topic to publish on"
    )


def test_problems_are_kept_for_file_line_mapping() -> None:
    with pytest.raises(ReceiverConfigError) as err:
        parse_config("duty", {"type": "email", "host": "", "port": 0, "from": "v@x", "to": ["a"]})
    assert [loc for loc, _ in err.value.problems] == ["host", "port"]

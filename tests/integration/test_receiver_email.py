"""The e-mail receiver against a real SMTP server (aiosmtpd) on loopback that demands
STARTTLS (a certificate from a throwaway CA) and AUTH LOGIN, and hands the messages it
accepted back to the test."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from connectors.mqtt.mosquitto import free_port
from connectors.sinks.email import message_id
from connectors.sinks.receivers import build_receiver
from engine.contracts.notification import DeliveryError, Notification
from tests.notifications import RecordingSleep, all_clear, flood

USER, PASSWORD = "vigil@flood.example", "pa55-w0rd"
TO = ["duty@flood.example", "head@flood.example", "commander@flood.example"]


@dataclass
class Mailbox:
    """What the server accepted, and how each client logged in."""

    messages: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    logins: list[tuple[str, str, bool]] = field(default_factory=list)  # mechanism, user, tls

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        user = auth_data.login.decode()
        self.logins.append((mechanism, user, session.ssl is not None))
        ok = user == USER and auth_data.password.decode() == PASSWORD
        return AuthResult(success=ok, handled=False)


@dataclass
class SmtpServer:
    port: int
    ca_file: Path
    mailbox: Mailbox


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        auth_exclude_mechanism=["PLAIN"],  # AUTH LOGIN is what it must speak
        authenticator=mailbox.authenticate,
    )
    controller.start()
    try:
        yield SmtpServer(port, ca_file, mailbox)
    finally:
        controller.stop()


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_TEST_SMTP_PASSWORD", PASSWORD)


def _config(smtp: SmtpServer, **kw: object) -> dict[str, object]:
    return {
        "type": "email",
        "host": "127.0.0.1",
        "port": smtp.port,
        "username": USER,
        "password_env": "VIGIL_TEST_SMTP_PASSWORD",
        "ca_file": str(smtp.ca_file),
        "from": "Vigil <vigil@flood.example>",
        "to": TO,
        **kw,
    }


def _send(config: dict[str, object], n: Notification, sleep: RecordingSleep | None = None) -> None:
    async def run() -> None:
        receiver = build_receiver("mail", config, sleep=sleep or RecordingSleep())
        try:
            await receiver.send(n)
        finally:
            await receiver.aclose()

    asyncio.run(run())


def test_message_reaches_every_recipient_over_starttls_with_auth_login(smtp: SmtpServer) -> None:
    n = flood(key="outbox-7")
    _send(_config(smtp), n)

    assert smtp.mailbox.logins == [("LOGIN", USER, True)]  # logged in after STARTTLS
    [(sender, rcpts, msg)] = smtp.mailbox.messages
    assert sender == "vigil@flood.example"
    assert rcpts == TO
    assert msg["Subject"] == "【红色预警】demo_river:示例二号站水位 4.92 m,红色预警(共 3 条)"
    assert msg["To"] == ", ".join(TO)
    assert msg["Message-ID"] == message_id("outbox-7")
    assert msg["X-Vigil-Key"] == "outbox-7"
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    plain = text.get_content()
    assert "▲ 红色预警  示例二号站水位 4.92 m,红色预警" in plain
    assert "确认:https://vigil.example/ack/abc?sig=1" in plain
    assert "2024-07-01 08:00+08:00" in plain  # Beijing time by default
    page = html.get_content()
    assert '<a href="https://vigil.example/ack/abc?sig=1">确认</a>' in page
    assert '<b style="color:#d7191c">红色预警</b>' in page


def test_all_clear_in_english(smtp: SmtpServer) -> None:
    _send(_config(smtp, lang="en", timezone="UTC"), all_clear())
    [(_, _, msg)] = smtp.mailbox.messages
    assert msg["Subject"] == "[ALL CLEAR] demo_river: all 1 alert(s) cleared"
    text = msg.get_body(("plain",))
    assert text is not None
    assert "▼ ALL CLEAR (was RED warning)" in text.get_content()


def test_the_same_notification_keeps_its_message_id(smtp: SmtpServer) -> None:
    _send(_config(smtp), flood(key="k"))
    _send(_config(smtp), flood(key="k"))
    ids = {msg["Message-ID"] for _, _, msg in smtp.mailbox.messages}
    assert ids == {message_id("k")}


def test_a_wrong_password_is_permanent(smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_TEST_SMTP_PASSWORD", "wrong")
    sleep = RecordingSleep()
    with pytest.raises(DeliveryError) as err:
        _send(_config(smtp), flood(), sleep)
    assert err.value.retryable is False
    assert str(err.value).startswith("receiver 'mail': SMTP 535:")
    assert sleep.delays == [] and smtp.mailbox.messages == []


def test_an_untrusted_certificate_gets_no_password_and_no_message(smtp: SmtpServer) -> None:
    config = _config(smtp, retry={"attempts": 1})
    del config["ca_file"]  # the throwaway CA is not among the system's
    with pytest.raises(DeliveryError) as err:
        _send(config, flood())
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)
    assert smtp.mailbox.messages == [] and smtp.mailbox.logins == []


def test_a_server_that_is_down_is_retried_then_retryable() -> None:
    config = {
        "type": "email",
        "host": "127.0.0.1",
        "port": free_port(),
        "from": "vigil@flood.example",
        "to": TO[:1],
        "retry": {"attempts": 3, "initial_s": 2},
    }
    sleep = RecordingSleep()
    with pytest.raises(DeliveryError) as err:
        _send(config, flood(), sleep)
    assert err.value.retryable is True
    assert sleep.delays == [2.0, 4.0]

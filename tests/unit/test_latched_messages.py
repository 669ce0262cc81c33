"""A latched red (its data cleared, nobody acknowledged it) is still a red warning to
the people who get the message: before, the message it caused was headed "ALL CLEAR"
(the notification carried the all-clear event and every sink read the event's state),
with only the note saying it was latched."""

from __future__ import annotations

from datetime import UTC

from connectors.sinks.render import render_line, render_text
from connectors.sinks.robots import render_markdown
from engine.contracts.notification import Notification
from engine.runtime.dispatch.outbox import decode_notification, encode_notification
from tests.unit.dispatch_support import MIN, S, dispatcher, event, run_for
from tests.unit.test_dispatch_lifecycle import ROUTING


def _latched_message() -> Notification:
    """The duty room's message after a red's data cleared and nobody took it."""
    d, clock = dispatcher(ROUTING)
    d.receive(event("A", "red", at=1))
    run_for(d, clock, 60 * S)
    d.receive(event("A", "none", "red", at=2))
    [n] = [n for n in run_for(d, clock, 6 * MIN) if n.receiver == "duty"]
    return n


def test_a_latched_red_is_headed_red_in_every_rendering() -> None:
    n = _latched_message()
    [a] = n.alerts
    assert (n.status, n.level, a.state) == ("firing", "red", "resolved")
    assert n.latched == {a.fingerprint: "red"}
    assert render_line(n, "en").startswith("[RED warning] qiantang: ")
    assert render_line(n, "zh").startswith("【红色预警】qiantang:")
    text = render_text(n, "en", UTC).splitlines()
    assert text[4].startswith("■ RED warning, latched: data cleared, until acknowledged  ")
    assert "■ 红色预警(数据已恢复,待确认后解除)" in render_text(n, "zh", UTC)
    assert "RED warning, latched: data cleared" in render_markdown(n, "en", UTC, False)
    assert n.to_dict()["alerts"][0]["latched"] == "red"


def test_the_outbox_keeps_what_is_latched() -> None:
    n = _latched_message()
    assert decode_notification(encode_notification(n)) == n
    old = {k: v for k, v in encode_notification(n).items() if k != "latched"}
    assert decode_notification(old).latched == {}  # an entry stored before this field

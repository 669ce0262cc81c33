"""The gateway dispatcher's outbox (a real RocksDB in tmp) and signed acknowledge links."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine.contracts.alerts import AlertEvent
from engine.contracts.notification import Notification
from engine.runtime.dispatch.links import AckLinks, LinkError
from engine.runtime.dispatch.outbox import Outbox

EVENT = AlertEvent("fp1", "r", "HZ001", "water_level", "red", "orange", "firing", 1, 2, 6.8,
                   6.52, "HZ001 6.80 m", {"basin": "demo_river"})  # fmt: skip


def _n(key: str, receiver: str = "duty") -> Notification:
    return Notification(key, receiver, "firing", "red", {"basin": "demo_river"}, (EVENT,),
                        {"fp1": "http://x/ack/t"}, 5, "note")  # fmt: skip


def test_outbox_keeps_state_and_pending_entries_in_order_across_a_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "d")
    a, b, c = box.persist({"version": 1, "x": 1}, [_n("duty:g:1"), _n("mail:g:1", "mail"),
                                                   _n("duty:g:2")])  # fmt: skip
    box.done(a, 10)
    box.park(b, "receiver 'mail': HTTP 400", 11)
    box.close()

    again = Outbox(tmp_path / "d")
    assert again.snapshot() == {"version": 1, "x": 1}
    assert [(e.seq, e.notification) for e in again.pending()] == [(c.seq, _n("duty:g:2"))]
    assert [p["notification"]["key"] for p in again.parked()] == ["mail:g:1"]
    assert again.parked()[0]["error"] == "receiver 'mail': HTTP 400"
    assert [d["notification"]["key"] for d in again.delivered()] == ["duty:g:1"]
    [d] = again.persist(None, [_n("duty:g:3")])
    assert d.seq == 3  # the counter survives: no seq is reused
    assert again.snapshot() == {"version": 1, "x": 1}  # None leaves the state as it was


LINKS = AckLinks(b"secret", "http://gw:6066/", ttl_ms=60_000)


def test_a_link_acknowledges_its_alert_until_it_expires() -> None:
    url = LINKS.url("fp1", now_ms=1_000)
    assert url.startswith("http://gw:6066/ack/fp1.61000.")
    token = url.rsplit("/", 1)[1]
    assert LINKS.verify(token, now_ms=60_999) == "fp1"
    with pytest.raises(LinkError, match=r"^this acknowledge link has expired; use the CLI"):
        LINKS.verify(token, now_ms=61_000)


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.replace("fp1", "fp2", 1),  # another alert
        lambda t: t.replace(".61000.", ".99999999.", 1),  # a later deadline
        lambda t: AckLinks(b"other", "http://gw", 60_000).token("fp1", 61_000),  # another key
    ],
)
def test_a_link_cannot_be_moved_extended_or_forged(change: Callable[[str], str]) -> None:
    token = LINKS.token("fp1", 61_000)
    with pytest.raises(LinkError, match=r"^this acknowledge link is not valid"):
        LINKS.verify(change(token), now_ms=0)


def test_garbage_is_not_a_link() -> None:
    with pytest.raises(LinkError, match=r"^this is not an acknowledge link$"):
        LINKS.verify("hello", now_ms=0)

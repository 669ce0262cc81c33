"""The broker's cumulative dropped count -> gateway health alerts (evaluation.broker_drops)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from engine.contracts.alerts import AlertEvent
from engine.evaluation.broker_drops import RULE_ID, BrokerDropAlerts


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def _tracker(path: Path, clock: _Clock, sent: list[AlertEvent]) -> BrokerDropAlerts:
    async def send(events: list[AlertEvent]) -> None:
        sent.extend(events)

    return BrokerDropAlerts(
        gateway="gw1",
        broker="127.0.0.1:1883",
        send=send,
        state_path=path,
        clear_after_ms=60_000,
        clock=clock,
    )


def test_rises_alert_once_each_across_restarts_then_resolve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state, clock, sent = tmp_path / "drops.json", _Clock(), []
    first = _tracker(state, clock, sent)
    asyncio.run(first.observe(0))
    assert sent == []
    with caplog.at_level(logging.ERROR):
        asyncio.run(first.observe(120))
    assert "dropped 120 messages (120 since it started)" in caplog.text
    clock.now += 5_000
    asyncio.run(first.observe(120))  # the same count again: nothing new
    assert [(e.rule_id, e.level, e.previous_level, e.value) for e in sent] == [
        (RULE_ID, "yellow", "none", 120.0)
    ]

    again = _tracker(state, clock, sent)  # a restarted gateway remembers what it reported
    asyncio.run(again.observe(120))
    asyncio.run(again.observe(150))
    assert [(e.level, e.previous_level, e.value, e.started_at) for e in sent[1:]] == [
        ("yellow", "yellow", 30.0, 1_000_000)
    ]
    asyncio.run(again.check_clear())  # not quiet long enough yet
    clock.now += 60_000
    asyncio.run(again.check_clear())
    assert [(e.state, e.level, e.previous_level) for e in sent[2:]] == [
        ("resolved", "none", "yellow")
    ]
    assert not _tracker(state, clock, sent).firing


def test_a_count_below_the_reported_one_is_a_restarted_broker(tmp_path: Path) -> None:
    clock, sent = _Clock(), []
    tracker = _tracker(tmp_path / "drops.json", clock, sent)
    asyncio.run(tracker.observe(500))
    asyncio.run(tracker.observe(40))  # the broker restarted and has dropped 40 since
    assert [e.value for e in sent] == [500.0, 40.0]
    assert sent[1].labels["dropped_total"] == "40"

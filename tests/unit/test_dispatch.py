from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from connectors.sinks.jsonl import JsonlSink
from engine.contracts.alerts import AlertEvent, fingerprint, pack_lines, unpack_events
from engine.dispatch.delivery import Dispatcher


def _event(at: int, level: str = "yellow") -> AlertEvent:
    return AlertEvent(
        fingerprint=fingerprint("r", "S1", "water_level"),
        rule_id="r",
        station="S1",
        metric="water_level",
        level=level,
        previous_level="none",
        state="firing",
        started_at=at,
        at=at,
        value=4.6,
        threshold=4.5,
        summary="S1 yellow",
    )


class ListSink:
    name = "list"

    def __init__(self, fail_times: int = 0) -> None:
        self.events: list[AlertEvent] = []
        self.fail_times = fail_times

    async def deliver(self, event: AlertEvent) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("receiver down")
        self.events.append(event)

    def flush(self) -> None:
        return None

    def delivered_keys(self) -> set[str]:
        return set()

    def close(self) -> None:
        return None


def test_duplicates_are_dropped_by_idempotency_key() -> None:
    sink = ListSink()
    d = Dispatcher([sink])
    results = [asyncio.run(d.dispatch(e)) for e in (_event(1), _event(1), _event(2))]
    assert results == [True, False, True]
    assert [e.at for e in sink.events] == [1, 2]
    assert d.counters["duplicates"] == 1


def test_two_changes_of_a_series_in_one_ms_are_both_delivered(tmp_path: Path) -> None:
    """A window closes and clears the level; the reading that closed it raises it again,
    at the same ms. The second is no repeat of the first: both reach people, once,
    also after a restart that reads the sink back."""
    raise_again, cleared = _event(5, "yellow"), _event(5, "none")
    sink = JsonlSink(tmp_path / "alerts.jsonl")
    d = Dispatcher([sink])
    assert [asyncio.run(d.dispatch(e)) for e in (cleared, raise_again, cleared)] == [
        True, True, False,
    ]  # fmt: skip
    sink.close()
    again = Dispatcher([JsonlSink(tmp_path / "alerts.jsonl")])
    assert [asyncio.run(again.dispatch(e)) for e in (cleared, raise_again)] == [False, False]


def test_failing_sink_is_retried() -> None:
    sink = ListSink(fail_times=1)
    d = Dispatcher([sink], retries=2)
    asyncio.run(d.dispatch(_event(1)))
    assert [e.at for e in sink.events] == [1]
    assert d.counters["failed.list"] == 1


def test_jsonl_sink_remembers_deliveries_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    sink = JsonlSink(path)
    asyncio.run(Dispatcher([sink]).dispatch(_event(1)))
    sink.close()
    with path.open("a") as f:
        f.write('{"fingerprint": "torn')  # a crash mid-line
    sink = JsonlSink(path)
    d = Dispatcher([sink])
    assert asyncio.run(d.dispatch(_event(1))) is False
    assert asyncio.run(d.dispatch(_event(2))) is True
    sink.close()
    keys = [
        AlertEvent.from_json(x).at for x in path.read_text().splitlines() if x.startswith('{"at')
    ]
    assert keys == [1, 2]


def test_alert_records_pack_and_unpack_in_order_within_the_size() -> None:
    events = [
        AlertEvent(
            f"fp{i}", "flood", f"S{i}", "water_level", "yellow", "none", "firing",
            i, i, 4.2, 4.0, "流域 summary\nwith a newline",
        )
        for i in range(50)
    ]  # fmt: skip
    records = pack_lines((e.to_json() for e in events), max_bytes=2_000)
    assert len(records) > 1
    assert all(len(r) <= 2_000 for r in records)
    assert [e for r in records for e in unpack_events(r)] == events
    # An event larger than the limit gets a record of its own rather than being lost.
    (big,) = pack_lines([events[0].to_json()], max_bytes=10)
    assert unpack_events(big) == [events[0]]


def test_a_record_of_events_is_delivered_in_order_once_each_while_a_sink_fails() -> None:
    good, bad = ListSink(), ListSink(fail_times=1)
    bad.name = "flaky"
    d = Dispatcher([good, bad], retries=1)
    fresh = asyncio.run(d.dispatch_many([_event(1), _event(2), _event(1), _event(3)]))
    assert [e.at for e in fresh] == [1, 2, 3]
    assert [e.at for e in good.events] == [1, 2, 3]
    assert [e.at for e in bad.events] == [1, 2, 3]  # its first failure retried
    assert d.counters["duplicates"] == 1 and d.counters["failed.flaky"] == 1
    assert asyncio.run(d.dispatch_many([_event(3), _event(4)])) == [_event(4)]


def test_a_bad_line_of_an_alerts_record_raises_or_is_set_aside_with_the_rest_kept() -> None:
    events = [
        AlertEvent(
            f"fp{i}", "flood", f"S{i}", "water_level", "yellow", "none", "firing",
            i, i, 4.2, 4.0, "summary",
        )
        for i in range(3)
    ]  # fmt: skip
    record = b"\n".join([events[0].to_json().encode(), b"{not json", events[1].to_json().encode(),
                         b"[1, 2]", b"[" * 100_000, events[2].to_json().encode()])  # fmt: skip
    with pytest.raises((ValueError, TypeError)):
        unpack_events(record)
    bad: list[tuple[bytes, Exception]] = []
    assert unpack_events(record, bad) == events
    assert [line for line, _ in bad] == [b"{not json", b"[1, 2]", b"[" * 100_000]
    assert all(isinstance(exc, (ValueError, TypeError, RecursionError)) for _, exc in bad)

"""Basin rules in event time: whatever the order in which the partitions' alerts arrive
(a lagging partition, a failover's replay), the group alerts are those of ``vigil
replay``, which takes the events sorted (``Corroborator.run``).

The stage runs here without Faust: its route -> record -> take/release path with dicts
for tables, a list for each topic and a clock the test advances.
"""

from __future__ import annotations

import asyncio
import dataclasses
import types
from collections import Counter
from typing import Any

from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contracts.alerts import WATERMARK_HEADER, AlertEvent, Level, fingerprint, watermark_of
from engine.contracts.ruleset import CorroborationRule
from engine.evaluation.corroboration import Corroborator
from engine.evaluation.corroboration_buffer import END_OF_TIME, EventTimeBuffer
from engine.runtime.corroboration.stage import CorroborationStage
from engine.runtime.sending import Outgoing
from engine.runtime.watermarks import MarkThrottle

H = 3_600_000
STATIONS = "ABCDEF"
RULE = CorroborationRule(
    rule_id="basin2", source_rule="flood", min_level=Level.YELLOW, k=2,
    groups={"east": tuple(STATIONS)}, within_ms=H, level=Level.ORANGE, for_ms=0,
    summary="{basin}: {value:.0f} gauges", resolved_summary="{basin}: all clear",
)  # fmt: skip
IDLE_S = 10.0


def _ev(station: str, level: str, at: int, previous: str = "none") -> AlertEvent:
    return AlertEvent(
        fingerprint("flood", station, "water_level"), "flood", station, "water_level", level,
        previous, "resolved" if level == "none" else "firing", at, at, 1.0, 1.0, "",
    )  # fmt: skip


class _Topic:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[tuple[int | None, bytes]] = []

    def get_topic_name(self) -> str:
        return self.name

    async def send(self, *, value: bytes, partition: int | None = None, **_: Any) -> Any:
        self.sent.append((partition, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class Harness:
    """A corroboration stage whose records are delivered when the test says so."""

    def __init__(self, sources: int = 3, lateness_ms: int = 0, history_s: float = 86_400.0) -> None:
        self.now = 100.0  # wall seconds
        self.alerts = _Topic("alerts")
        stage = object.__new__(CorroborationStage)
        stage.topology = types.SimpleNamespace(  # type: ignore[assignment]
            ruleset=types.SimpleNamespace(corroboration=(RULE,)),
            partition_for=lambda key: 0,
            partitions=sources,
            lateness_ms=lateness_ms,
            corroboration_idle_s=IDLE_S,
            corroboration_history_s=history_s,
            counters=Counter(),
            alerts=self.alerts,
            app=types.SimpleNamespace(
                consumer=types.SimpleNamespace(assignment=lambda: {TP("corr", 0)})
            ),
            hand_over=self._hand_over,
        )
        stage.topic = _Topic("corr")  # type: ignore[assignment]
        stage.stations, stage.firing, stage.pending = {}, {}, {}  # type: ignore[assignment]
        stage.watermarks, stage.history = {}, {}  # type: ignore[assignment]
        stage._init_state(clock=lambda: self.now)
        self.stage = stage

    async def _hand_over(self, records: list[Outgoing]) -> list[Any]:
        """``Sending.hand_over``: here the topics' sends, in order."""
        topics = {t.get_topic_name(): t for t in (self.stage.topic, self.alerts)}
        return [await topics[r.topic].send(value=r.value, partition=r.partition) for r in records]

    async def route(self, source: int, events: list[AlertEvent], watermark: int | None) -> None:
        """The dispatcher took an alerts record of ``source``; its routed records, and
        the watermarks (here at once, not throttled), arrive."""
        await self.stage.route(events, source, watermark)
        await self.stage._send_marks()
        await self.deliver()

    async def deliver(self) -> None:
        await self.stage.flush()
        topic = self.stage.topic
        assert isinstance(topic, _Topic)
        sent, topic.sent = topic.sent, []
        for partition, value in sent:
            assert partition is not None
            for line in value.decode().split("\n"):
                await self.stage._take(line, partition)
            await self.stage._release(partition)

    async def wait(self, seconds: float) -> None:
        """Wall time passes; the stage's timer runs and its records arrive."""
        self.now += seconds
        await self.stage._on_timer()
        await self.deliver()

    def group_alerts(self) -> list[tuple[str, str, str, int, int]]:
        events = [AlertEvent.from_json(v) for _, v in self.alerts.sent]
        return sorted((e.fingerprint, e.previous_level, e.level, e.at, e.started_at)
                      for e in events)  # fmt: skip


def _replayed(events: list[AlertEvent]) -> list[tuple[str, str, str, int, int]]:
    return sorted(
        (g.fingerprint, g.previous_level, g.level, g.at, g.started_at)
        for g in Corroborator((RULE,)).run(events)
    )


def test_a_lagging_partition_does_not_raise_a_false_basin_alert() -> None:
    # Partition 0 lags: B's entry (partition 1, at 1.5 h) arrives before A's entry at
    # 1 h and A's leave at 1.2 h. In event time A had left before B came: no alert.
    # Taken in arrival order, A and B counted together: the basin rose at 1.5 h and
    # cleared "at 1.2 h".
    a_in, a_out = _ev("A", "yellow", H), _ev("A", "blue", H + H // 5, previous="yellow")
    b_in = _ev("B", "yellow", H + H // 2)
    h = Harness(sources=2)

    async def scenario() -> None:
        await h.route(1, [b_in], H + H // 2)
        await h.route(0, [a_in], H)
        await h.route(0, [a_out], H + H // 5)
        assert h.stage.pending, "B waits for partition 0 to pass 1.5 h"
        await h.route(0, [], 2 * H)
        await h.route(1, [], 2 * H)

    asyncio.run(scenario())
    assert _replayed([a_in, a_out, b_in]) == []
    assert h.group_alerts() == []
    assert h.stage.pending == {}


def test_the_basin_alert_waits_for_every_partition_then_fires_at_its_event_time() -> None:
    a_in, b_in = _ev("A", "yellow", H), _ev("B", "orange", H + 60_000)
    h = Harness(sources=3)

    async def scenario() -> None:
        await h.route(0, [a_in], H + 120_000)
        await h.route(1, [b_in], H + 120_000)
        assert h.group_alerts() == []  # partition 2 has not passed 1 h yet
        await h.route(2, [], H + 60_001)

    asyncio.run(scenario())
    assert h.group_alerts() == _replayed([a_in, b_in])
    assert [lvl for _, _, lvl, _, _ in h.group_alerts()] == ["orange"]


def test_an_idle_partition_stops_holding_the_basin_back_after_the_idle_time() -> None:
    # Partition 2 never sends anything (no stations, or all silent): after IDLE_S of
    # wall time the held events go, on a tick the stage sends itself.
    a_in, b_in = _ev("A", "yellow", H), _ev("B", "yellow", H + 60_000)
    h = Harness(sources=3)

    async def scenario() -> None:
        await h.route(0, [a_in], 2 * H)
        await h.route(1, [b_in], 2 * H)
        await h.wait(IDLE_S - 1)
        assert h.group_alerts() == []
        await h.wait(1.5)

    asyncio.run(scenario())
    assert h.group_alerts() == _replayed([a_in, b_in]) != []
    assert h.stage.topology.counters["corroboration_late_events"] == 0


def test_held_events_survive_a_rebuild_from_the_tables() -> None:
    # A failover (or an error) rebuilds the stage's memory from its tables: the held
    # events come back from ``pending``, in order, and are applied once.
    a_in, b_in = _ev("A", "yellow", H), _ev("B", "yellow", H + 60_000)
    h = Harness(sources=2)

    async def scenario() -> None:
        await h.route(0, [a_in], 2 * H)
        await h.route(1, [b_in], H + 60_000)  # A's entry is applied, B's is held
        assert list(h.stage.pending) == [f"basin2\x1feast\x1fB\x1f{H + 60_000}"]
        h.stage._states = None  # as after a revocation
        await h.route(0, [a_in], 2 * H)  # the new owner of partition 0 replays it
        await h.route(1, [], 2 * H)

    asyncio.run(scenario())
    assert h.group_alerts() == _replayed([a_in, b_in]) != []
    assert h.stage.pending == {}


def test_events_held_at_a_restart_are_released_on_a_quiet_stream() -> None:
    # The process stops with events held; after the restart nothing more arrives on
    # their partition. The stage ticks itself, rebuilds them from the table, and lets
    # them go once the sources (no watermark heard since the restart) are idle.
    a_in, b_in = _ev("A", "yellow", H), _ev("B", "yellow", H + 60_000)
    h = Harness(sources=2)
    asyncio.run(h.route(0, [a_in, b_in], 2 * H))  # partition 1 has not passed them
    assert len(h.stage.pending) == 2 and h.group_alerts() == []
    restarted = Harness(sources=2)
    restarted.stage.stations = h.stage.stations
    restarted.stage.firing = h.stage.firing
    restarted.stage.pending = h.stage.pending
    restarted.stage.watermarks = h.stage.watermarks
    restarted.stage.history = h.stage.history

    async def scenario() -> None:
        await restarted.wait(1.0)  # a tick: the held events are rebuilt, still held
        assert len(restarted.stage.pending) == 2 and restarted.group_alerts() == []
        await restarted.wait(IDLE_S + 1.0)

    asyncio.run(scenario())
    assert restarted.group_alerts() == _replayed([a_in, b_in]) != []
    assert restarted.stage.pending == {}


class _CountingTable(dict[str, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.writes += 1
        super().__delitem__(key)


def test_an_event_let_go_by_its_own_records_watermark_is_never_written_as_held() -> None:
    h = Harness(sources=2)
    table = h.stage.pending = _CountingTable()  # type: ignore[assignment]

    async def scenario() -> None:
        await h.route(1, [], 2 * H)
        await h.route(0, [_ev("A", "yellow", H), _ev("B", "yellow", H + 1)], 2 * H)

    asyncio.run(scenario())
    assert len(h.group_alerts()) == 1 and table.writes == 0


def test_the_watermarks_survive_a_restart() -> None:
    # Partition 0 was at 2 h when the process stopped; after the restart partition 1
    # passes B's time: B goes at once, not after partition 0 has sent a newer mark or
    # the idle time has passed.
    a_in, b_in = _ev("A", "yellow", H), _ev("B", "yellow", H + 60_000)
    h = Harness(sources=2)

    async def before() -> None:
        await h.route(0, [a_in, b_in], 2 * H)
        await h.route(1, [], H + 30_000)  # A's entry goes, B's is held

    asyncio.run(before())
    restarted = Harness(sources=2)
    for table in ("stations", "firing", "pending", "watermarks", "history"):
        setattr(restarted.stage, table, getattr(h.stage, table))
    asyncio.run(restarted.route(1, [], 2 * H))
    assert restarted.group_alerts() == _replayed([a_in, b_in]) != []
    assert restarted.stage.pending == {}


def test_buffer_horizon_allowance_and_idle_sources() -> None:
    now = [0.0]
    buf = EventTimeBuffer(2, allowance_ms=1_000, idle_s=5.0, clock=lambda: now[0])
    buf.add((10_000, "r", "g", "A"), ("yellow", "m"))
    assert buf.horizon() < 10_000  # no source heard of yet
    buf.mark(0, 12_000)
    buf.mark(1, 11_000)
    assert buf.horizon() == 9_999 and buf.pop_due(buf.horizon()) is None
    buf.mark(1, 10_500)  # an older mark (a replay) changes nothing
    assert buf.watermarks[1] == 11_000
    buf.mark(1, 11_001)
    assert buf.pop_due(buf.horizon()) == ((10_000, "r", "g", "A"), ("yellow", "m"))
    buf.add((20_000, "r", "g", "B"), ("yellow", "m"))
    buf.add((20_000, "r", "g", "B"), ("yellow", "m"))  # a repeat is held once
    assert len(buf) == 1
    assert buf.wake_at() == 5.0  # both sources last advanced at 0 s
    now[0] = 5.0
    assert buf.horizon() == END_OF_TIME  # every source idle: everything goes
    buf.add((9_000, "r", "g", "C"), ("yellow", "m"))
    assert buf.late == 1  # older than what was released: taken in arrival order


def test_the_watermark_header_is_read_from_either_header_form() -> None:
    assert watermark_of([(WATERMARK_HEADER, b"1719763200000")]) == 1_719_763_200_000
    assert watermark_of({"other": b"x", WATERMARK_HEADER: b"5"}) == 5
    assert watermark_of(None) is None and watermark_of([("other", b"1")]) is None


_LEVELS = ("none", "blue", "yellow", "orange")


@st.composite
def _station_series(draw: st.DrawFn, station: str) -> list[AlertEvent]:
    """A station's transitions, in its own order, on a 10-minute grid (ties across
    stations are frequent on purpose)."""
    steps = draw(st.lists(st.integers(0, 36), max_size=6, unique=True))
    events, level = [], "none"
    for step in sorted(steps):
        new = draw(st.sampled_from([x for x in _LEVELS if x != level]))
        events.append(_ev(station, new, step * 600_000, previous=level))
        level = new
    return events


@settings(max_examples=150, deadline=None)
@given(data=st.data(), lateness_ms=st.sampled_from([0, 1_200_000]))
def test_any_interleaving_of_partitions_gives_the_replays_group_alerts(
    data: st.DataObject, lateness_ms: int
) -> None:
    """Stations in three partitions; each partition's alerts in batches with its
    watermark (the newest event time of the partition, as ``PartitionProcessor``
    keeps it); readings may reach their partition up to ``lateness_ms`` out of order;
    the partitions' records arrive in any interleaving, and a partition is now and
    then replayed from an earlier batch (a failover), marks included."""
    sources = 3
    events = [e for s in STATIONS for e in data.draw(_station_series(s), label=s)]
    batches: list[list[tuple[list[AlertEvent], int]]] = []
    for p in range(sources):
        mine = [e for e in events if STATIONS.index(e.station) % sources == p]
        jitter = [data.draw(st.integers(0, max(lateness_ms - 1, 0))) for _ in mine]
        # Arrival order within the partition: by event time plus a delay below the
        # allowed lateness, a station's own events in their order.
        order = sorted(range(len(mine)), key=lambda i: (mine[i].at + jitter[i], i))
        arrived = [mine[i] for i in order]
        # A station's own events stay in its order (the processor emits a series in
        # order): each takes the place of its k-th arrival.
        own = {s: iter(sorted((e for e in arrived if e.station == s), key=lambda e: e.at))
               for s in STATIONS}  # fmt: skip
        arrived = [next(own[e.station]) for e in arrived]
        cuts = sorted(data.draw(st.sets(st.integers(1, max(len(arrived) - 1, 1)))))
        chunks = [arrived[a:b] for a, b in zip([0, *cuts], [*cuts, len(arrived)], strict=True)]
        run, newest = [], -1
        for chunk in chunks:
            newest = max([newest, *(e.at for e in chunk)])
            run.append((chunk, newest))
        batches.append([b for b in run if b[0] or b[1] >= 0])
    h = Harness(sources=sources, lateness_ms=lateness_ms)
    expected = _replayed(events)

    async def scenario() -> None:
        nxt = [0] * sources
        while any(nxt[p] < len(batches[p]) for p in range(sources)):
            p = data.draw(st.sampled_from([p for p in range(sources) if nxt[p] < len(batches[p])]))
            if nxt[p] and data.draw(st.integers(0, 9)) == 0:  # a failover: replay
                nxt[p] = data.draw(st.integers(0, nxt[p] - 1))
            chunk, watermark = batches[p][nxt[p]]
            await h.route(p, chunk, watermark)
            nxt[p] += 1
        await h.wait(IDLE_S + 1)  # the newest events go once every partition is idle

    asyncio.run(scenario())
    assert h.group_alerts() == expected
    assert h.stage.pending == {}
    assert h.stage.topology.counters["corroboration_late_events"] == 0


def test_replay_takes_events_of_the_same_millisecond_in_station_order() -> None:
    # A leaves and C enters at the same millisecond while B is in: whatever order the
    # kernels emitted them in, the group is taken the same way (live and replay).
    events = [
        _ev("A", "yellow", 0), _ev("B", "yellow", H + 1),
        _ev("C", "yellow", 2 * H), _ev("A", "blue", 2 * H, previous="yellow"),
    ]  # fmt: skip
    first = Corroborator((RULE,)).run(events)
    second = Corroborator((RULE,)).run([events[0], events[1], events[3], events[2]])
    assert [(g.level, g.at) for g in first] == [(g.level, g.at) for g in second]


def test_a_watermark_rides_on_alerts_and_goes_alone_at_most_once_a_second() -> None:
    now = [0.0]
    marks = MarkThrottle(1.0, clock=lambda: now[0])
    assert marks.to_send(3, 1_000, piggyback=False) == 1_000  # the first goes at once
    marks.sent(3, 1_000)
    assert marks.to_send(3, 1_000, piggyback=True) is None  # not newer: never again
    assert marks.to_send(3, 2_000, piggyback=True) == 2_000  # on a record that goes anyway
    marks.sent(3, 2_000)
    now[0] = 0.5
    assert marks.to_send(3, 3_000, piggyback=False) is None  # alone: not yet
    marks.hold(3, 3_000)
    marks.hold(3, 2_500)  # an older one does not replace it
    assert marks.due() == {}
    now[0] = 1.0
    assert marks.due() == {3: 3_000}  # the timer sends it: the last one arrives too
    marks.sent(3, 3_000)
    assert marks.due() == {}
    marks.hold(4, 10)
    marks.forget(4)
    assert marks.due() == {}


def test_an_event_nothing_blocks_is_due_at_the_callers_clock_reading() -> None:
    """With a clock that moves between readings (as time.monotonic does), an event that
    only the idle timeout held back is due at the reading the timer took: a fresh
    reading inside ``wake_at`` was always later, and no tick was ever sent."""
    ticks = iter(range(10**6))
    clock = lambda: next(ticks) * 0.5  # noqa: E731  # each reading half a second on
    buf = EventTimeBuffer(1, allowance_ms=0, idle_s=1.0, clock=clock)
    buf.mark(0, 5_000)
    buf.add((10_000, "r", "g", "A"), ("yellow", "m"))
    for _ in range(4):
        clock()  # the source stands still past its idle timeout
    now = clock()  # the timer's reading
    wake = buf.wake_at(now)
    assert wake is not None and wake <= now


def test_the_group_alerts_of_a_release_go_out_together() -> None:
    """Three basins rise on the same record: their alerts are handed over together (one
    write on ``local://``), durable before the tables take the groups' new states."""
    rule = dataclasses.replace(RULE, k=1, groups={s: (s,) for s in "ABC"})
    h = Harness(sources=1)
    h.stage.topology.ruleset = types.SimpleNamespace(corroboration=(rule,))  # type: ignore[assignment]
    calls: list[list[str]] = []  # the topics of each hand-over
    hand_over = h._hand_over

    async def counting(records: list[Outgoing]) -> list[Any]:
        calls.append([r.topic for r in records])
        if r_alerts := [r for r in records if r.topic == "alerts"]:
            assert h.stage.firing == {}  # the tables wait for the alerts
            assert len(r_alerts) == 3
        return await hand_over(records)

    h.stage.topology.hand_over = counting  # type: ignore[assignment, method-assign]
    rising = [_ev(s, "yellow", H + i) for i, s in enumerate("ABC")]
    asyncio.run(h.route(0, rising, 2 * H))
    assert [c for c in calls if "alerts" in c] == [["alerts"] * 3]
    assert sorted(AlertEvent.from_json(v).station for _, v in h.alerts.sent) == ["A", "B", "C"]
    assert len(h.stage.firing) == 3

"""Basin rules and a gauge's store-and-forward backlog: an event older than what the
stage already let go (``late``) is put in its place in its group's history, so that the
basin alerts are those ``vigil replay`` raises, those of a past episode included.

The scenario of issue 10: basin rule k=2 within 1 h. Gauge B rises at t0+10 min (live)
and falls back at t0+40 min; gauge A was at the level from t0 to t0+50 min, but its
readings arrive as a backlog after B's. The replay raises the basin at t0+10 min and
clears it at t0+40 min. Taken in arrival order, B had left when A came: no basin alert.
"""

from __future__ import annotations

import asyncio
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contracts.alerts import AlertEvent, Level
from engine.evaluation.corroboration import Corroborator, GroupState, corroboration_event
from tests.unit.test_corroboration_event_time import (
    IDLE_S,
    RULE,
    STATIONS,
    Harness,
    _ev,
    _replayed,
    _station_series,
)

H = 3_600_000
MIN = 60_000
T0 = 10 * H
A_IN, A_OUT = _ev("A", "yellow", T0), _ev("A", "none", T0 + 50 * MIN, previous="yellow")
B_IN, B_OUT = _ev("B", "red", T0 + 10 * MIN), _ev("B", "none", T0 + 40 * MIN, previous="red")


def _transitions(events: list[AlertEvent]) -> list[tuple[str, int, Level]]:
    return [(e.station, e.at, Level.parse(e.level)) for e in events]


def _keys(events: list[AlertEvent]) -> list[tuple[str, str, str, int, int]]:
    return sorted((e.fingerprint, e.previous_level, e.level, e.at, e.started_at) for e in events)


def _told(h: Harness) -> bool:
    """Whether a dispatcher fed the group alerts in the order sent is left firing (it
    takes an event unless it is older than the one it has)."""
    at, level = -1, "none"
    for _, value in h.alerts.sent:
        e = AlertEvent.from_json(value)
        if e.at >= at:
            at, level = e.at, e.level
    return level != "none"


def _firing_at_end(events: list[AlertEvent]) -> bool:
    """Whether the replay of ``events`` ends with the basin raised."""
    replayed = Corroborator((RULE,)).run(events)
    return bool(replayed) and replayed[-1].level != "none"


def test_the_replay_raises_and_clears_the_basin_while_a_was_out_of_coverage() -> None:
    replayed = _replayed([A_IN, A_OUT, B_IN, B_OUT])
    assert [(lvl, at, started) for _, _, lvl, at, started in replayed] == [
        ("orange", T0 + 10 * MIN, T0 + 10 * MIN),
        ("none", T0 + 40 * MIN, T0 + 10 * MIN),
    ]


def test_group_state_puts_a_late_backlog_in_its_place() -> None:
    state = GroupState(history_ms=24 * H)
    for event in (B_IN, B_OUT):  # live: B alone, nothing
        assert state.take_all(RULE, _transitions([event])).raised == []
    outcome = state.take_all(RULE, _transitions([A_IN, A_OUT]))  # A's backlog
    sent = [corroboration_event(RULE, "east", "water_level", c) for c in outcome.raised]
    assert _keys(sent) == _replayed([A_IN, A_OUT, B_IN, B_OUT])
    assert (outcome.revised, outcome.too_old, outcome.withdrawn) == (1, 0, [])
    # The live state is the replay's: nobody counts now, the history holds all four.
    assert state.entered == {} and state.firing_since is None
    assert sorted(state.history) == sorted((e.at, e.station) for e in (A_IN, A_OUT, B_IN, B_OUT))


def test_the_stage_sends_the_basin_alerts_of_a_late_backlog() -> None:
    h = Harness(sources=2)

    async def scenario() -> None:
        await h.route(1, [B_IN, B_OUT], T0 + 2 * H)  # B live, on time
        await h.route(0, [], T0 + 2 * H)  # A's partition is current (other gauges)
        assert h.group_alerts() == [] and h.stage.pending == {}  # B's events were let go
        await h.route(0, [A_IN, A_OUT], T0 + 2 * H)  # A's backlog, two hours late

    asyncio.run(scenario())
    assert h.group_alerts() == _replayed([A_IN, A_OUT, B_IN, B_OUT]) != []
    counters = h.stage.topology.counters
    assert counters["corroboration_late_events"] == 1  # A's leave at t0+50 min is not late
    assert counters["corroboration_revised_events"] == 1
    assert counters["corroboration_withdrawn_alerts"] == 0


def test_the_history_survives_a_restart() -> None:
    h = Harness(sources=2)

    async def live() -> None:
        await h.route(1, [B_IN, B_OUT], T0 + 2 * H)
        await h.route(0, [], T0 + 2 * H)

    asyncio.run(live())
    assert len(h.stage.history) == 2
    restarted = Harness(sources=2)
    for table in ("stations", "firing", "pending", "watermarks", "history"):
        setattr(restarted.stage, table, getattr(h.stage, table))
    asyncio.run(restarted.route(0, [A_IN, A_OUT], T0 + 2 * H))
    assert restarted.group_alerts() == _replayed([A_IN, A_OUT, B_IN, B_OUT]) != []


def test_the_history_is_pruned_by_age() -> None:
    h = Harness(sources=1, history_s=3600)
    later = _ev("C", "yellow", T0 + 3 * H)

    async def scenario() -> None:
        await h.route(0, [B_IN, B_OUT], T0 + H)
        await h.route(0, [later], T0 + 4 * H)

    asyncio.run(scenario())
    assert list(h.stage.history) == [f"basin2\x1feast\x1fC\x1f{T0 + 3 * H}"]


def test_a_backlog_older_than_the_history_is_taken_on_arrival_and_counted() -> None:
    h = Harness(sources=2, history_s=1800)

    async def scenario() -> None:
        await h.route(1, [B_IN, B_OUT], T0 + 2 * H)
        await h.route(0, [], T0 + 2 * H)
        await h.route(0, [A_IN, A_OUT], T0 + 2 * H)

    asyncio.run(scenario())
    assert h.group_alerts() == []  # in arrival order, as before: B had left
    assert h.stage.topology.counters["corroboration_too_old_events"] == 1


def test_what_was_sent_and_a_late_event_undoes_is_counted() -> None:
    # A and B raise the basin at t0+40 min live; A's reading of t0+35 min, below the
    # level, arrives late: A had left before B came. The raise cannot be taken back.
    a_in, b_in = _ev("A", "yellow", T0 + 30 * MIN), _ev("B", "yellow", T0 + 40 * MIN)
    a_out = _ev("A", "none", T0 + 35 * MIN, previous="yellow")
    h = Harness(sources=2)

    async def scenario() -> None:
        await h.route(0, [a_in], T0 + 2 * H)
        await h.route(1, [b_in], T0 + 2 * H)
        assert [lvl for _, _, lvl, _, _ in h.group_alerts()] == ["orange"]
        await h.route(0, [a_out], T0 + 2 * H)

    asyncio.run(scenario())
    assert _replayed([a_in, a_out, b_in]) == []
    assert h.stage.topology.counters["corroboration_withdrawn_alerts"] == 1
    assert h.stage.stations["basin2\x1feast\x1fA"] == [None, T0 + 35 * MIN]
    # The live state is the replay's (not firing), and the raise sent is followed by an
    # all-clear at its own time: the sinks are not left with a basin alert that was not.
    assert h.stage.firing == {"basin2\x1feast": [None, [False, T0 + 40 * MIN, T0 + 40 * MIN]]}
    assert [(lvl, at) for _, _, lvl, at, _ in h.group_alerts()] == [
        ("orange", T0 + 40 * MIN), ("none", T0 + 40 * MIN),
    ]  # fmt: skip


def test_after_a_backlog_older_than_the_history_a_late_event_raises_nothing_twice() -> None:
    # History of 20 min. Live: B at 5:00 and C at 5:30 raise the basin (since 5:30). A's
    # entry at 4:50 is older than the history: taken on arrival. Then D's entry at 5:20,
    # late but within the history: recomputed from records made before A counted, the
    # group would not be firing before D and raise again (at 5:20) what was sent.
    state = GroupState(history_ms=20 * MIN)
    y = Level.YELLOW
    sent = state.take_all(RULE, [("B", 5 * H, y)]).raised
    sent += state.take_all(RULE, [("C", 5 * H + 30 * MIN, y)]).raised
    assert [(c.firing, c.at) for c in sent] == [(True, 5 * H + 30 * MIN)]
    outcome = state.take_all(RULE, [("A", 4 * H + 50 * MIN, y)])
    assert (outcome.too_old, outcome.raised) == (1, [])
    outcome = state.take_all(RULE, [("D", 5 * H + 20 * MIN, y)])
    assert outcome.raised == [] and outcome.withdrawn == []
    assert state.firing_since == 5 * H + 30 * MIN


def test_a_withdrawn_all_clear_of_a_basin_that_still_fires_is_restated() -> None:
    # Live: A and B raise the basin at t0+10 min, B's leave clears it at t0+30 min. C's
    # backlog says C was at the level from t0+20 min on: with C the basin never cleared.
    # The all-clear was sent and cannot be taken back; the sinks must not be left with
    # it while the basin fires: the raise is told again, at the group's newest time
    # (a dispatcher takes an event older than the one it has as stale).
    a_in, c_in = _ev("A", "yellow", T0), _ev("C", "yellow", T0 + 20 * MIN)
    b_in = _ev("B", "yellow", T0 + 10 * MIN)
    b_out = _ev("B", "none", T0 + 30 * MIN, previous="yellow")
    h = Harness(sources=2)

    async def scenario() -> None:
        await h.route(0, [a_in], T0 + 2 * H)
        await h.route(1, [b_in, b_out], T0 + 2 * H)
        assert [(lvl, at) for _, _, lvl, at, _ in h.group_alerts()] == [
            ("orange", T0 + 10 * MIN), ("none", T0 + 30 * MIN),
        ]  # fmt: skip
        await h.route(0, [c_in], T0 + 2 * H)  # C's backlog

    asyncio.run(scenario())
    replayed = _replayed([a_in, b_in, b_out, c_in])
    assert [(lvl, at, started) for _, _, lvl, at, started in replayed] == [
        ("orange", T0 + 10 * MIN, T0 + 10 * MIN)
    ]
    told = sorted(h.group_alerts(), key=lambda k: (k[3], k[2] != "none"))
    assert [(lvl, at, started) for _, _, lvl, at, started in told][-1] == (
        "orange", T0 + 30 * MIN, T0 + 10 * MIN,
    )  # fmt: skip
    assert h.stage.firing != {}  # the live state is the replay's: firing
    assert h.stage.topology.counters["corroboration_withdrawn_alerts"] == 1


@settings(deadline=None)  # examples: the profile's (VIGIL_DIFF_EXAMPLES for more)
@given(data=st.data())
def test_a_late_block_gives_every_alert_of_the_replay(data: st.DataObject) -> None:
    """Each station's transitions in its own order; some stations go out of coverage
    from some point on, and what they recorded since arrives after everything else,
    station after station, in records cut anywhere (a gateway receiving backlogs),
    with restarts between records now and then. After each record the groups stand
    where a replay of everything received stands, so the group alerts sent are those
    of the replays of each prefix: every one of the replay's (no miss), and exactly
    the replay's when the late records do not undo what was sent before them."""
    series = {s: data.draw(_station_series(s), label=s) for s in STATIONS}
    late_from = {s: data.draw(st.integers(0, len(series[s]))) for s in STATIONS}
    on_time = sorted((e for s in STATIONS for e in series[s][: late_from[s]]),
                     key=lambda e: (e.at, e.station))  # fmt: skip
    late = [e for s in data.draw(st.permutations(STATIONS)) for e in series[s][late_from[s] :]]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(late) - 1, 1)))))
    records = [late[a:b] for a, b in zip([0, *cuts], [*cuts, len(late)], strict=True) if late[a:b]]
    end = max((e.at for e in on_time + late), default=0) + 1
    h = Harness(sources=1)

    async def scenario() -> None:
        for i in range(0, len(on_time), 3):  # live, in event time
            chunk = on_time[i : i + 3]
            await h.route(0, chunk, chunk[-1].at)
        await h.route(0, [], end)
        for record in records:
            if data.draw(st.booleans(), label="restart"):
                h.stage._states = None  # memory lost: rebuilt from the tables
            await h.route(0, record, end)
        await h.wait(IDLE_S + 1)

    asyncio.run(scenario())
    sent = set(h.group_alerts())
    prefixes = [on_time + [e for r in records[:n] for e in r] for n in range(len(records) + 1)]
    replays = [set(_replayed(p)) for p in prefixes]
    assert set().union(*replays) <= sent
    expected = replays[-1]
    assert expected <= sent  # no miss
    if all(a <= b for a, b in pairwise(replays)):
        assert sent == expected  # no record undid what was sent before it
    # Beyond the replays' alerts only restatements, and the sinks are left where the
    # replay ends: firing or not, as a dispatcher takes what it is sent.
    assert _told(h) == _firing_at_end(prefixes[-1])
    assert h.stage.pending == {}

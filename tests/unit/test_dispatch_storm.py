"""A flood storm: 10,000 level transitions in one minute across 1,000 gauges in 10
basins must reach each receiver as a few grouped messages, not thousands.

The expected count comes from a reference written here from the timing rules alone
(first message ``group_wait`` after a group's first alert, then a look every
``group_interval`` that sends when any of the group's alerts changed since the group was
last told; a rate-limited receiver's held messages go when there is room and tell what
changed until then), not from the dispatcher's code. Every gauge is a flood gauge whose first
transition in each basin is the basin's epicentre going red, so no later alert raises a
group above what it has shown (the "worse level is not held" rule stays out of it).
"""

from __future__ import annotations

import random

from engine.contracts.alerts import AlertEvent
from engine.contracts.notification import Notification
from tests.unit.dispatch_support import MIN, T0, S, dispatcher, event

ROUTING = """\
receivers:
  - {name: duty, type: webhook}
  - {name: sms, type: sms, rate_limit: {messages: 6, per: 1m}}
route:
  receivers: [duty]
  group_by: [basin]
  group_wait: 30s
  group_interval: 5m
  routes:
    - {matchers: [level>=orange], receivers: [sms], continue: true}
    - {receivers: [duty]}
"""
LEVELS = ("blue", "yellow", "orange", "red")
WAIT, INTERVAL, HORIZON = 30 * S, 5 * MIN, 12 * MIN  # horizon < red's 15-min repeat


def _storm() -> list[tuple[int, AlertEvent]]:
    """(arrival ms after T0, event): 10,000 transitions in 60 s, 10 per gauge."""
    rng = random.Random(12)
    out: list[tuple[int, AlertEvent]] = []
    for b in range(10):
        basin = f"basin{b}"
        # the epicentre goes red first and moves only after its group's first look
        gauges = [(f"{basin}-epicentre", [b * 10, *sorted(rng.sample(range(32_000, 60_000), 9))])]
        gauges += [
            (f"{basin}-g{g:02d}", sorted(rng.sample(range(1000, 60_000), 10))) for g in range(99)
        ]
        for station, times in gauges:
            level = "none"
            for k, t in enumerate(times):
                choices = ["red"] if k == 0 and station.endswith("epicentre") else LEVELS
                new = rng.choice([x for x in choices if x != level])
                out.append((t, event(station, new, level, at=k + 1, basin=basin)))
                level = new
    out.sort(key=lambda pair: pair[0])
    assert len(out) == 10_000
    return out


def _reference(storm: list[tuple[int, AlertEvent]], orange_up: bool, limit: int | None) -> int:
    """Messages for one route. Per basin group: the first at first alert + WAIT, then one
    at each later look (every INTERVAL) if one of its alerts changed since the group was
    last told; an alert belongs to the group from the first transition the route takes.
    With ``limit`` a minute, what does not fit waits for room, in group order, and tells
    the changes up to when it goes. Everything happens on the 1-s ticks."""
    joined: set[str] = set()
    changes: dict[str, list[int]] = {}
    for t, e in storm:
        if e.station not in joined and (not orange_up or LEVELS.index(e.level) >= 2):
            joined.add(e.station)
        if e.station in joined:
            changes.setdefault(e.labels["basin"], []).append(_tick(t))
    looks = sorted(
        (_tick(times[0] + WAIT) + k * INTERVAL, order, basin)
        for order, (basin, times) in enumerate(changes.items())
        for k in range(HORIZON // INTERVAL + 1)
    )
    told: dict[str, int] = {}
    sent: list[int] = []
    waiting: list[tuple[int, str]] = []
    for now in range(0, HORIZON + 1, S):
        waiting += [(o, b) for t, o, b in looks if t == now and _news(changes[b], told.get(b), now)]
        waiting = sorted(set(waiting))
        while waiting and (limit is None or sum(1 for x in sent if x > now - MIN) < limit):
            told[waiting.pop(0)[1]] = now
            sent.append(now)
    return len(sent)


def _tick(ms: int) -> int:
    return -(-ms // S) * S


def _news(times: list[int], told_at: int | None, now: int) -> bool:
    return told_at is None or any(told_at < t <= now for t in times)


def test_a_storm_reaches_each_receiver_as_a_few_grouped_messages() -> None:
    storm = _storm()
    d, clock = dispatcher(ROUTING)
    sent: list[Notification] = []
    pending = list(storm)
    while clock.now_ms() < T0 + HORIZON:
        clock.advance(S)
        while pending and T0 + pending[0][0] <= clock.now_ms():
            d.receive(pending.pop(0)[1])
        sent += d.tick()
    duty = [n for n in sent if n.receiver == "duty"]
    sms = [n for n in sent if n.receiver == "sms"]
    assert len(duty) == _reference(storm, orange_up=False, limit=None)
    assert len(sms) == _reference(storm, orange_up=True, limit=6)
    assert len(duty) <= 20 and len(sms) <= 20  # 10 basins: a first message and an update

    # Nothing lost: each gauge's last message carries its last transition.
    last_told: dict[str, AlertEvent] = {}
    for n in duty:
        last_told.update({a.station: a for a in n.alerts})
    last_event = {e.station: e for _, e in storm}
    assert last_told == last_event
    # The SMS gateway never got more than 6 in a minute.
    times = sorted(n.created_at for n in sms)
    assert all(b - a >= MIN for a, b in zip(times, times[6:], strict=False))

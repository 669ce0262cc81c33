"""A window the watermark closed while its gauge was silent, decided again when the
gauge's backlog reopens it (issue 10, the live-equals-replay harness, Hypothesis seed
6496): live raises at once on what was known, then decides the window again as the
replay decides it, from the level state before that first decision; the two events at
the window's end are the replay's one step (``tests.differential.compare``).

The rule is the flood pack's rise rate: a 1-h ``delta`` (last minus first reading) of
the water level, blue 0.3 m, yellow 0.5 m, orange 1.0 m, deadband 0.05 m. Gauge A rises
from 0:00, falls silent at 0:30 and uploads what it held at 1:30 (in one message or in
chunks); gauge B reports every 5 minutes throughout and moves the partition's event
time on, which closes A's first hour provisionally at 1:10.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch
from engine.contracts.ruleset import RuleSet, ThresholdRule
from engine.evaluation.processor import PartitionProcessor
from engine.tools.replay import END_OF_TIME, replay
from tests.differential.compare import compare

M = 60_000
H = 60 * M
T0 = 1_700_006_400_000 // (24 * H) * (24 * H)  # a day boundary
RISE = ThresholdRule("rise", "water_level", ("A", "B"), np.tile([[0.3, 0.5, 1.0, 2.0]], (2, 1)),
                     window_ms=H, aggregate="delta", deadband=0.05)  # fmt: skip
RULES = RuleSet((RISE,))
#: A's readings before it falls silent at 0:30: the first half hour rises 0.6 m (yellow).
BEFORE = [0.0, 0.1, 0.2, 0.3, 0.45, 0.6]
Reading = tuple[str, str, int, float]


def _run(held: list[float], uploads: list[tuple[int, int]], restart: bool) -> list[AlertEvent]:
    """Live: one batch per 5-min report; A's readings from 0:30 on (``held``, one per 5 min)
    come as uploads (number of readings, arrival in minutes after T0), each just before
    B's report at that time. ``restart``: a new processor from the snapshot after every
    batch. Returns the level events, the windows flushed at the end."""
    a = [("A", "water_level", T0 + k * 5 * M, v) for k, v in enumerate([*BEFORE, *held])]
    batches: list[list[Reading]] = [[r] for r in a[: len(BEFORE)]]
    batches += [[("B", "water_level", T0 + k * 5 * M, 1.0)] for k in range(30)]
    batches.sort(key=lambda b: b[0][2])
    first = len(BEFORE)
    for n, minute in uploads:
        at = next(i for i, b in enumerate(batches) if b[0][2] >= T0 + minute * M)
        batches.insert(at, a[first : first + n])
        first += n
    assert first == len(a)
    now = [T0]
    proc = PartitionProcessor(RULES, lateness_ms=10 * M, clock=lambda: now[0])
    events: list[AlertEvent] = []
    for offset, rows in enumerate(batches):
        now[0] = max(now[0], max(r[2] for r in rows))
        events += proc.process(TelemetryBatch.from_rows(rows), offset)
        if restart:
            blob = proc.snapshot()
            proc = PartitionProcessor(RULES, lateness_ms=10 * M, clock=proc.clock)
            proc.restore(blob)
    events += proc.close_windows(END_OF_TIME)
    return [e for e in events if "health" not in e.labels]


def _steps(events: list[AlertEvent]) -> list[tuple[str, str, int, int, float]]:
    """A's level events: (from, to, at and started_at in minutes after T0, value)."""
    return [(e.previous_level, e.level, (e.at - T0) // M, (e.started_at - T0) // M,
             round(e.value, 3)) for e in events if e.station == "A"]  # fmt: skip


#: A's backlog 0:30-1:25, rising on: the first hour's delta is 1.2 m (orange).
RISING = [0.7, 0.8, 0.9, 1.0, 1.1, 1.2] + [1.2] * 6
#: A's backlog 0:30-1:25, falling back: the first hour's delta is 0.48 m, blue for the
#: replay; from yellow, the level sent, it would be held by the 0.05-m deadband.
FALLING = [0.55, 0.5, 0.5, 0.49, 0.48, 0.48] + [0.48] * 6


@pytest.mark.parametrize("restart", [False, True])
@pytest.mark.parametrize(
    ("held", "uploads", "live"),
    [
        # yellow on what was known at 1:10, orange when the backlog came at 1:30
        (RISING, [(12, 90)], [("none", "yellow", 60, 60, 0.6), ("yellow", "orange", 60, 60, 1.2)]),
        # yellow at 1:10, lowered to blue at once when the backlog showed the hour's rise
        (FALLING, [(12, 90)], [("none", "yellow", 60, 60, 0.6), ("yellow", "blue", 60, 60, 0.48)]),
        # in chunks: 0:30-0:40 at 1:30 (closed provisionally again at 1:40: orange, above
        # the yellow sent), then the rest at 1:45 (decided from none: blue)
        ([1.1, 1.2, 1.3, *FALLING[3:]], [(3, 90), (9, 105)],
         [("none", "yellow", 60, 60, 0.6), ("yellow", "orange", 60, 60, 1.3),
          ("orange", "blue", 60, 60, 0.48)]),
        # in chunks, the first not raising above the yellow sent (not applied)
        ([0.55, 0.5, 0.5, *FALLING[3:]], [(3, 90), (9, 105)],
         [("none", "yellow", 60, 60, 0.6), ("yellow", "blue", 60, 60, 0.48)]),
    ],
)  # fmt: skip
def test_a_window_decided_on_what_was_known_is_decided_again_as_the_replay_decides_it(
    held: list[float],
    uploads: list[tuple[int, int]],
    live: list[tuple[str, str, int, int, float]],
    restart: bool,
) -> None:
    got = _run(held, uploads, restart)
    a = [("A", "water_level", T0 + k * 5 * M, v) for k, v in enumerate([*BEFORE, *held])]
    b = [("B", "water_level", T0 + k * 5 * M, 1.0) for k in range(30)]
    want = replay(RULES, a + b)
    # the replay decides the first hour once, on all its readings; then the hour from
    # 1:00 (flat) clears the level at 2:00
    level = live[-1][1]
    assert _steps(want) == [("none", level, 60, 60, live[-1][4]), (level, "none", 120, 60, 0.0)]
    # live: the decisions as they were made, then the same all-clear
    assert _steps(got) == [*live, (level, "none", 120, 60, 0.0)]
    diff = compare(got, want, until=END_OF_TIME)
    assert not diff, diff.report()


def test_events_at_one_time_are_one_step_only_when_they_begin_with_a_raise() -> None:
    """The comparison takes a raise in two steps at one ``at`` for the replay's one; a
    window that closes and clears while the reading that closed it raises again stays
    event for event (a new episode: on-call staff got an all-clear and a new alert)."""
    got = _run(RISING, [(12, 90)], restart=False)
    a = [("A", "water_level", T0 + k * 5 * M, v) for k, v in enumerate([*BEFORE, *RISING])]
    b = [("B", "water_level", T0 + k * 5 * M, 1.0) for k in range(30)]
    want = replay(RULES, a + b)
    assert not compare(got, want, until=END_OF_TIME)
    clear, again = _event(got[0], "yellow", "none", 60), _event(got[0], "none", "yellow", 120)
    assert not compare([clear, again], [clear, again], until=END_OF_TIME)
    diff = compare([clear], [clear, again], until=END_OF_TIME)
    assert diff.missing and not diff.extra


def _event(like: AlertEvent, previous: str, level: str, started_min: int) -> AlertEvent:
    """``like`` at 2:00 going from ``previous`` to ``level``, its episode from then."""
    from dataclasses import replace

    return replace(like, previous_level=previous, level=level, at=T0 + 2 * H,
                   started_at=T0 + started_min * M)  # fmt: skip

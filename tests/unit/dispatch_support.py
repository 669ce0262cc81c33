"""Small builders for the dispatcher's tests: events, a config, a clock loop."""

from __future__ import annotations

from engine.contracts.alerts import AlertEvent, Level, transition_event
from engine.contracts.notification import Notification
from engine.dispatch.clock import ManualClock
from engine.dispatch.config import DispatchConfig, parse_dispatch_config
from engine.dispatch.dispatcher import Dispatcher

T0 = 1_700_000_000_000  # 2023-11-14, ms
S = 1000
MIN = 60 * S


def event(
    station: str, level: str, previous: str = "none", at: int = 0, *,
    rule: str = "flood.river_level", started_at: int = 0, **labels: str,
) -> AlertEvent:  # fmt: skip
    """A transition of ``rule`` at ``station``; labels default to a flood gauge of the
    qiantang basin."""
    full = {"kind": "river_gauge", "basin": "qiantang", "domain": "flood", **labels}
    return transition_event(
        rule, station, "water_level", Level.parse(level), Level.parse(previous), started_at,
        at, 5.0, 4.5, f"{station} {level}", full,
    )  # fmt: skip


def config(text: str) -> DispatchConfig:
    return parse_dispatch_config(text, "routing.yaml")


def dispatcher(text: str, start: int = T0) -> tuple[Dispatcher, ManualClock]:
    clock = ManualClock(start)
    return Dispatcher(config(text), clock), clock


def run_for(d: Dispatcher, clock: ManualClock, ms: int, step: int = S) -> list[Notification]:
    """Tick every ``step`` ms for ``ms`` ms; every notification, in order."""
    out: list[Notification] = []
    end = clock.now_ms() + ms
    while clock.now_ms() < end:
        clock.advance(step)
        out += d.tick()
    return out


def brief(n: Notification, start: int = T0) -> tuple[int, str, str, str, list[str], str]:
    """(seconds since start, receiver, status, level, [station:level], note)."""
    alerts = [f"{a.station}:{a.level}" for a in n.alerts]
    return ((n.created_at - start) // S, n.receiver, n.status, n.level, alerts, n.note)

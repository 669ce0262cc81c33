"""Notifications for receiver tests: a flood group of a basin, and its all-clear."""

from __future__ import annotations

from engine.contracts.alerts import AlertEvent, Level, transition_event
from engine.contracts.notification import Notification

T0 = 1_719_792_000_000  # 2024-07-01 00:00Z


def alert(
    station: str,
    level: Level,
    previous: Level = Level.NONE,
    *,
    at: int = T0,
    started_at: int = T0,
    value: float = 4.92,
    threshold: float = 4.87,
    summary: str | None = None,
    rule_id: str = "flood_levels",
) -> AlertEvent:
    text = summary or f"{station} 水位 {value} m,{level.name.lower()}"
    labels = {"basin": "demo_river", "district": "西湖区"}
    return transition_event(
        rule_id, station, "water_level", level, previous, started_at, at, value, threshold,
        text, labels,
    )  # fmt: skip


def flood(key: str = "out-1", receiver: str = "duty", **kw: object) -> Notification:
    """Three gauges of one basin: red, orange and one that just cleared."""
    alerts = (
        alert(
            "HZ002",
            Level.RED,
            Level.ORANGE,
            at=T0 + 3_600_000,
            summary="示例二号站水位 4.92 m,红色预警",
        ),
        alert(
            "HZ001",
            Level.ORANGE,
            Level.YELLOW,
            at=T0 + 1_800_000,
            summary="示例一号站水位 4.70 m,橙色预警",
        ),
        alert(
            "HZ003",
            Level.NONE,
            Level.BLUE,
            at=T0 + 60_000,
            summary="示例三号站水位回落,蓝色预警解除",
        ),
    )
    fields: dict[str, object] = {
        "key": key,
        "receiver": receiver,
        "status": "firing",
        "level": "red",
        "group_labels": {"basin": "demo_river"},
        "alerts": alerts,
        "links": {alerts[0].fingerprint: "https://vigil.example/ack/abc?sig=1"},
        "created_at": T0 + 3_600_500,
        "note": "",
    }
    fields.update(kw)
    return Notification(**fields)  # type: ignore[arg-type]


def all_clear(key: str = "out-2", receiver: str = "duty") -> Notification:
    alerts = (
        alert(
            "HZ002",
            Level.NONE,
            Level.RED,
            at=T0 + 7_200_000,
            summary="示例二号站水位回落至 4.10 m,红色预警解除",
        ),
    )
    return Notification(
        key=key, receiver=receiver, status="resolved", level="none",
        group_labels={"basin": "demo_river"}, alerts=alerts, links={},
        created_at=T0 + 7_200_500,
    )  # fmt: skip


class RecordingSleep:
    """An injected ``sleep`` that records the delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)

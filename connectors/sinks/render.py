"""Notifications as text for people, in Chinese (``zh``) or English (``en``).

Two forms, reused by every receiver: ``render_line``, a short line for a subject, an SMS
or a robot's title (what, where, how bad, how many); and ``render_text``, the plain-text
body: each alert of the group with its level, station, value against threshold, since
when, and its acknowledge link. Levels read as on-call staff name them: 蓝色预警,
黄色预警, 橙色预警, 红色预警, and 解除 for the all-clear.

Times are the alerts' event times (UTC ms), shown in the receiver's time zone with its
offset (``2024-07-01 13:00+08:00``). An alert's ``summary`` is the rule's own text and
stays as the rule wrote it in either language.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Literal

from engine.contracts.alerts import AlertEvent, Level
from engine.contracts.notification import Notification

__all__ = ["Lang", "format_time", "level_name", "render_line", "render_text", "where"]

Lang = Literal["zh", "en"]

_ZH = {
    Level.NONE: "解除",
    Level.BLUE: "蓝色预警",
    Level.YELLOW: "黄色预警",
    Level.ORANGE: "橙色预警",
    Level.RED: "红色预警",
}
_EN = {
    Level.NONE: "all clear",
    Level.BLUE: "BLUE warning",
    Level.YELLOW: "YELLOW warning",
    Level.ORANGE: "ORANGE warning",
    Level.RED: "RED warning",
}


def level_name(level: str, lang: Lang = "zh") -> str:
    """``red`` -> ``红色预警`` / ``RED warning``; ``none`` -> ``解除`` / ``all clear``."""
    return (_ZH if lang == "zh" else _EN)[Level.parse(level)]


def format_time(ms: int, tz: tzinfo = UTC) -> str:
    """``2024-07-01 13:00+08:00`` (``Z`` for UTC): minutes are what people act on."""
    dt = datetime.fromtimestamp(ms / 1000, tz)
    offset = dt.strftime("%z")
    suffix = "Z" if offset in ("+0000", "") else f"{offset[:3]}:{offset[3:]}"
    return dt.strftime("%Y-%m-%d %H:%M") + suffix


def where(n: Notification) -> str:
    """The group's place: its grouping labels' values (``demo_river / 西湖区``), or the
    stations' ids when the route groups by nothing."""
    if n.group_labels:
        return " / ".join(n.group_labels[k] for k in sorted(n.group_labels))
    stations = sorted({a.station for a in n.alerts})
    return ", ".join(stations[:3]) + ("…" if len(stations) > 3 else "")


def _firing(n: Notification) -> list[AlertEvent]:
    # Highest level first, then the oldest episode: the worst news leads. A latched
    # alert is in force until acknowledged, at the level it is held at.
    return sorted(
        (a for a in n.alerts if n.is_firing(a)),
        key=lambda a: (-Level.parse(n.shown_level(a)), a.started_at),
    )


def render_line(n: Notification, lang: Lang = "zh") -> str:
    """One line: ``【红色预警】demo_river:<worst alert's summary>(共 3 条)``."""
    place = where(n)
    count = len(n.alerts)
    firing = _firing(n)
    if n.status == "resolved" or not firing:
        if lang == "zh":
            return f"【预警解除】{place}:{count} 条预警已全部解除"
        return f"[ALL CLEAR] {place}: all {count} alert(s) cleared"
    head = firing[0].summary
    if lang == "zh":
        more = f"(共 {count} 条)" if count > 1 else ""
        return f"【{level_name(n.level, 'zh')}】{place}:{head}{more}"
    more = f" (+{count - 1} more)" if count > 1 else ""
    return f"[{level_name(n.level, 'en')}] {place}: {head}{more}"


def _alert_lines(
    a: AlertEvent, latched: str | None, link: str | None, lang: Lang, tz: tzinfo
) -> list[str]:
    """``a``'s lines; ``latched``: the level a latch holds it at (its data cleared)."""
    level, previous = Level.parse(a.level), Level.parse(a.previous_level)
    if latched is not None:
        tag = (
            f"■ {level_name(latched, 'zh')}(数据已恢复,待确认后解除)"
            if lang == "zh"
            else f"■ {level_name(latched, 'en')}, latched: data cleared, until acknowledged"
        )
    elif level is Level.NONE:
        tag = (
            f"▼ {level_name(a.previous_level, 'zh')}解除"
            if lang == "zh"
            else f"▼ ALL CLEAR (was {level_name(a.previous_level, 'en')})"
        )
    else:
        tag = ("▲ " if level > previous else "▼ ") + level_name(a.level, lang)
    since = format_time(a.started_at, tz)
    at = format_time(a.at, tz)
    if lang == "zh":
        detail = (
            f"  站点 {a.station} · {a.metric} {a.value:g}(阈值 {a.threshold:g})"
            f" · 开始 {since} · 本次 {at} · 规则 {a.rule_id}"
        )
        ack = f"  确认:{link}" if link else None
    else:
        detail = (
            f"  station {a.station} · {a.metric} {a.value:g} (threshold {a.threshold:g})"
            f" · since {since} · this change {at} · rule {a.rule_id}"
        )
        ack = f"  acknowledge: {link}" if link else None
    return [f"{tag}  {a.summary}", detail, *([ack] if ack else [])]


def render_text(n: Notification, lang: Lang = "zh", tz: tzinfo = UTC) -> str:
    """The plain-text body: the line, the note, each alert (worst first, then the
    cleared ones), and when the dispatcher sent it. Ends with a newline."""
    lines = [render_line(n, lang)]
    if n.note:
        lines.append(("说明:" if lang == "zh" else "Note: ") + n.note)
    if n.group_labels:
        labels = ", ".join(f"{k}={n.group_labels[k]}" for k in sorted(n.group_labels))
        lines.append(("分组:" if lang == "zh" else "Group: ") + labels)
    lines.append("")
    firing = _firing(n)
    cleared = [a for a in n.alerts if not n.is_firing(a)]
    for a in [*firing, *cleared]:
        lines += _alert_lines(a, n.latched.get(a.fingerprint), n.links.get(a.fingerprint), lang, tz)
    lines.append("")
    sent = format_time(n.created_at, tz)
    lines.append(f"Vigil · 发送于 {sent}" if lang == "zh" else f"Vigil · sent {sent}")
    return "\n".join(lines) + "\n"

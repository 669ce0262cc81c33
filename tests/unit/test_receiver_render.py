"""Rendering a notification for people: the line, the text, level names, times."""

from __future__ import annotations

from dataclasses import replace
from zoneinfo import ZoneInfo

from connectors.sinks.render import format_time, level_name, render_line, render_text
from connectors.sinks.robots import fit_utf8
from tests.notifications import T0, all_clear, flood

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_level_names() -> None:
    assert [level_name(x) for x in ("blue", "yellow", "orange", "red", "none")] == [
        "蓝色预警",
        "黄色预警",
        "橙色预警",
        "红色预警",
        "解除",
    ]
    assert level_name("orange", "en") == "ORANGE warning"
    assert level_name("none", "en") == "all clear"


def test_times_show_the_offset() -> None:
    assert format_time(T0, SHANGHAI) == "2024-07-01 08:00+08:00"
    assert format_time(T0) == "2024-07-01 00:00Z"


def test_line_firing_and_resolved() -> None:
    assert render_line(flood()) == "【红色预警】demo_river:示例二号站水位 4.92 m,红色预警(共 3 条)"
    assert render_line(flood(), "en") == (
        "[RED warning] demo_river: 示例二号站水位 4.92 m,红色预警 (+2 more)"
    )
    assert render_line(all_clear()) == "【预警解除】demo_river:1 条预警已全部解除"
    assert render_line(all_clear(), "en") == "[ALL CLEAR] demo_river: all 1 alert(s) cleared"


def test_line_without_group_labels_names_the_stations() -> None:
    one = replace(flood(), group_labels={}, alerts=flood().alerts[:1])
    assert render_line(one) == "【红色预警】HZ002:示例二号站水位 4.92 m,红色预警"


def test_text_zh() -> None:
    n = flood(note="升级第 2 步:科长")
    assert render_text(n, "zh", SHANGHAI) == (
        "【红色预警】demo_river:示例二号站水位 4.92 m,红色预警(共 3 条)\n"
        "说明:升级第 2 步:科长\n"
        "分组:basin=demo_river\n"
        "\n"
        "▲ 红色预警  示例二号站水位 4.92 m,红色预警\n"
        "  站点 HZ002 · water_level 4.92(阈值 4.87) · 开始 2024-07-01 08:00+08:00"
        " · 本次 2024-07-01 09:00+08:00 · 规则 flood_levels\n"
        "  确认:https://vigil.example/ack/abc?sig=1\n"
        "▲ 橙色预警  示例一号站水位 4.70 m,橙色预警\n"
        "  站点 HZ001 · water_level 4.92(阈值 4.87) · 开始 2024-07-01 08:00+08:00"
        " · 本次 2024-07-01 08:30+08:00 · 规则 flood_levels\n"
        "▼ 蓝色预警解除  示例三号站水位回落,蓝色预警解除\n"
        "  站点 HZ003 · water_level 4.92(阈值 4.87) · 开始 2024-07-01 08:00+08:00"
        " · 本次 2024-07-01 08:01+08:00 · 规则 flood_levels\n"
        "\n"
        "Vigil · 发送于 2024-07-01 09:00+08:00\n"
    )


def test_text_en_all_clear() -> None:
    assert render_text(all_clear(), "en") == (
        "[ALL CLEAR] demo_river: all 1 alert(s) cleared\n"
        "Group: basin=demo_river\n"
        "\n"
        "▼ ALL CLEAR (was RED warning)  示例二号站水位回落至 4.10 m,红色预警解除\n"
        "  station HZ002 · water_level 4.92 (threshold 4.87) · since 2024-07-01 00:00Z"
        " · this change 2024-07-01 02:00Z · rule flood_levels\n"
        "\n"
        "Vigil · sent 2024-07-01 02:00Z\n"
    )


def test_fit_utf8_never_splits_a_character() -> None:
    text = "红色预警" * 100  # 3 bytes a character
    for limit in range(5, 60):
        cut = fit_utf8(text, limit)
        assert len(cut.encode()) <= limit
        assert cut.endswith("\n…") and text.startswith(cut[:-2])
    assert fit_utf8("short", 10) == "short"

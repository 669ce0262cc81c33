"""The routing file: exact problem lines, defaults and inheritance, the shipped example,
the route walk, and ``vigil dispatch check|test``."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.dispatch.config import DEFAULT_INHIBIT, load_dispatch_config, parse_dispatch_config
from engine.dispatch.router import Router, labels_of
from engine.tools.cli import main
from rules.errors import RulesInvalid
from tests.unit.dispatch_support import event

EXAMPLE = Path(__file__).parents[2] / "engine" / "dispatch" / "examples" / "flood_office.yaml"

BROKEN = """\
version: 1
receivers:
  - name: duty
    type: webhok
  - {name: sms, type: sms, rate_limit: {messages: 0}}
levels:
  rde: {latch: false}
route:
  receivers: [duty]
  group_wait: 30
  routes:
    - matchers: ['level>=orage', 'basin>=x', 'station=~"(HZ"']
      receivers: [sms]
    - receiver: [sms]
"""

BAD_REFERENCES = """\
receivers:
  - {name: duty, type: webhook}
  - {name: section-head, type: sms}
  - {name: duty, type: email}
route:
  receivers: [duty]
  routes:
    - matchers: [level>=orange]
      receivers: [dutty]
      escalation:
        - {after: 30m, receivers: [section-haed]}
        - {after: 10m, receivers: [section-head]}
"""


def _lines(text: str) -> list[str]:
    with pytest.raises(RulesInvalid) as exc:
        parse_dispatch_config(text, "routing.yaml")
    return exc.value.lines


def test_schema_problems_are_reported_with_file_line_col_and_hints() -> None:
    assert _lines(BROKEN) == [
        "routing.yaml:4:5: receivers[0].type: unknown receiver type 'webhok' (did you mean "
        "'webhook'?); expected one of webhook, email, sms, mqtt, jsonl, console",
        "routing.yaml:5:41: receivers[1].rate_limit.messages: Input should be greater than or "
        "equal to 1",
        "routing.yaml:7:3: levels.rde: expected one of blue, yellow, orange, red, got 'rde' "
        "(did you mean 'red'?)",
        "routing.yaml:10:3: route.group_wait: expected a duration like '15m', '1h', '90s' or "
        "'1d', got 30",
        "routing.yaml:12:18: route.routes[0].matchers[0]: unknown level 'orage' (did you mean "
        "'orange'?)",
        "routing.yaml:12:34: route.routes[0].matchers[1]: '>=' compares warning levels and works "
        "on 'level' only, got 'basin>=x'",
        "routing.yaml:12:46: route.routes[0].matchers[2]: invalid regular expression '(HZ': "
        "missing ), unterminated subpattern at position 0",
        "routing.yaml:14:7: route.routes[1].receiver: unknown field 'receiver' (did you mean "
        "'receivers'?)",
    ]


def test_references_to_receivers_and_escalation_order_are_checked_where_written() -> None:
    assert _lines(BAD_REFERENCES) == [
        "routing.yaml:4:6: receivers[2].name: duplicate receiver 'duty' (first at receivers[0])",
        "routing.yaml:9:19: route.routes[0].receivers[0]: unknown receiver 'dutty' (did you mean "
        "'duty'?)",
        "routing.yaml:11:36: route.routes[0].escalation[0].receivers[0]: unknown receiver "
        "'section-haed' (did you mean 'section-head'?)",
        "routing.yaml:12:12: route.routes[0].escalation[1].after: escalation steps must come in "
        "order of 'after', each later",
    ]


def test_the_root_route_takes_everything() -> None:
    text = "receivers: [{name: d, type: console}]\nroute: {matchers: [basin=x], continue: true}\n"
    assert _lines(text) == [
        "routing.yaml:2:1: route: the root route needs receivers",
        "routing.yaml:2:9: route.matchers: the root route takes every alert; put matchers on its "
        "routes",
        "routing.yaml:2:30: route.continue: the root route cannot continue",
    ]


def test_defaults_inheritance_and_the_shipped_inhibitions() -> None:
    config = parse_dispatch_config(
        """\
receivers: [{name: d, type: console}, {name: s, type: sms}]
levels: {blue: {receivers: d}, orange: {repeat_interval: 30m}}
route:
  receivers: [d]
  group_interval: 2m
  routes:
    - matchers: [level>=orange]
      receivers: s
      repeat_interval: never
      routes: [{matchers: [basin=x], group_by: [district]}]
"""
    )
    child = config.route.routes[0].routes[0]
    assert (child.receivers, child.group_by, child.group_wait_ms, child.group_interval_ms) == (
        ("s",), ("district",), 30_000, 120_000,
    )  # fmt: skip
    assert (child.repeat_ms, child.send_resolved, config.route.repeat_ms) == (0, True, None)
    assert {k: (p.repeat_ms, p.latch, p.receivers) for k, p in config.levels.items()} == {
        "red": (900_000, True, None),
        "orange": (1_800_000, False, None),
        "yellow": (14_400_000, False, None),
        "blue": (0, False, ("d",)),
    }
    assert config.inhibit == DEFAULT_INHIBIT
    none = parse_dispatch_config(
        "receivers: [{name: d, type: console}]\nroute: {receivers: d}\ninhibit: []\n"
    )
    assert none.inhibit == ()


def test_receiver_settings_are_left_to_the_receiver() -> None:
    config = load_dispatch_config(EXAMPLE)
    sms = config.receivers["duty-officer-sms"]
    assert (sms.type, sms.rate_limit and sms.rate_limit.messages) == ("sms", 6)
    assert sms.settings == {"to": ["+8613800000001"]}


# --- the route walk ----------------------------------------------------------------------

WALK = """\
receivers: [{name: all, type: console}, {name: a, type: console}, {name: b, type: console},
            {name: c, type: console}, {name: log, type: jsonl}]
levels: {blue: {receivers: log}}
route:
  receivers: [all]
  routes:
    - {matchers: ['station=~"HZ0.*"', 'health=""'], receivers: [a], continue: true}
    - {matchers: [level>=orange, basin!=oujiang], receivers: [b]}
    - {matchers: [level>yellow], receivers: [c]}
"""


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        ({"station": "HZ001", "level": "red", "basin": "qiantang"}, ["a", "b"]),
        ({"station": "HZ001", "level": "red", "basin": "oujiang"}, ["a", "c"]),
        ({"station": "HZ001", "level": "red", "health": "silent"}, ["b"]),
        ({"station": "LS001", "level": "yellow"}, ["all"]),
        ({"station": "HZ001", "level": "yellow"}, ["a"]),
        ({"station": "HZ001", "level": "blue"}, ["log"]),
        ({"station": "LS001"}, ["all"]),
    ],
)
def test_first_match_wins_unless_continue_and_no_match_is_the_parent(
    labels: dict[str, str], receivers: list[str]
) -> None:
    assert Router(parse_dispatch_config(WALK)).receivers(labels) == receivers


def test_the_labels_matchers_see() -> None:
    labels = labels_of(event("HZ001", "orange", health="qc"))
    assert labels == {
        "kind": "river_gauge", "basin": "qiantang", "domain": "flood", "health": "qc",
        "rule_id": "flood.river_level", "station": "HZ001", "metric": "water_level",
        "level": "orange", "state": "firing",
    }  # fmt: skip


# --- the command line ----------------------------------------------------------------------


def test_dispatch_check_passes_the_example_and_prints_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dispatch", "check", str(EXAMPLE)]) == 0
    assert capsys.readouterr().err == "ok: 1 file(s) valid\n"
    bad = tmp_path / "routing.yaml"
    bad.write_text(BAD_REFERENCES, encoding="utf-8")
    assert main(["dispatch", "check", str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert (
        out[1]
        == f"{bad}:9:19: route.routes[0].receivers[0]: unknown receiver 'dutty' (did you mean "
        "'duty'?)"
    )


def test_dispatch_test_prints_the_routes_and_receivers(capsys: pytest.CaptureFixture[str]) -> None:
    labels = ["domain=flood", "basin=qiantang", "level=red", "station=HZ001"]
    assert main(["dispatch", "test", "--config", str(EXAMPLE), "--labels", *labels]) == 0
    assert capsys.readouterr().out.splitlines() == [
        'route > route.routes[0] "sirens" {domain=~flood|rainfall|dam, level>=orange}',
        "  receivers: sirens",
        "  group_by: station; wait 0s, interval 5m, repeat per level",
        'route > route.routes[3] "flood duty officer" {domain=~flood|rainfall|dam, level>=orange}',
        "  receivers: duty-room, duty-officer-sms",
        "  group_by: basin; wait 30s, interval 2m, repeat per level",
        "  escalation: after 10m section-head-sms, after 30m commander-sms",
        "receivers: sirens, duty-room, duty-officer-sms",
    ]
    assert main(["dispatch", "test", "--config", str(EXAMPLE), "--labels", "level"]) == 2
    assert capsys.readouterr().err == "--labels: expected name=value, got 'level'\n"

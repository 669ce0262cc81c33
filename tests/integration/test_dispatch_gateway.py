"""The dispatcher in a running gateway, against real parts: mosquitto, ``vigil run``,
HTTP receivers (``http_receiver.py``), an SMTP server (aiosmtpd) and the ``vigil
alerts`` CLI. Clocks are real here; every wait polls for its condition."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiosmtpd.controller import Controller

from connectors.mqtt.mosquitto import Mosquitto, free_port
from connectors.sinks.email import message_id
from simulators.publisher import Publisher
from tests.integration.conftest import EngineProcess, write_settings
from tests.integration.http_receiver import HttpReceiver, Request

SECRET = "hook-secret-for-tests"
T0 = 1_719_792_000_000  # 2024-07-01T00:00Z
STEP = 300_000  # the gauges report every 5 min (event time)

RULES = {
    "version": 1,
    "rules": [
        {
            "id": "t.level",
            "select": {"kind": "river_gauge"},
            "metric": "water_level",
            "unit": "m",
            "window": {"size": "5m", "aggregate": "max"},
            "levels": {
                "yellow": {"above": "station.warning_level"},
                "red": {"above": "station.historical_max_level"},
            },
            "labels": {"domain": "flood"},
            "summary": {"zh": "{station} 水位 {value:.2f} m", "en": "{station} {value:.2f} m"},
            "all_clear": {"zh": "{station} 回落 {value:.2f} m", "en": "{station} back"},
        }
    ],
}


@dataclass
class Mailbox:
    messages: list[email.message.EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(msg)  # type: ignore[arg-type]
        return "250 accepted"


@pytest.fixture
def mailbox() -> Iterator[tuple[int, Mailbox]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, box
    finally:
        controller.stop()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def notifications(server: HttpReceiver, path: str) -> list[dict[str, Any]]:
    """The bodies POSTed to ``path``, first arrival of each key (the receiver honours
    Idempotency-Key), each checked against its signature."""
    seen: dict[str, dict[str, Any]] = {}
    for r in list(server.requests):
        if r.path != path:
            continue
        expected = "sha256=" + hmac.new(SECRET.encode(), r.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(r.headers["x-vigil-signature"], expected), r.body
        body = r.json()
        assert r.headers["idempotency-key"] == body["key"]
        seen.setdefault(body["key"], body)
    return list(seen.values())


def stations_in(n: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {a["station"]: (a["level"], a["state"]) for a in n["alerts"]}


def vigil_alerts(url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "engine.tools.cli", "alerts", "--url", url, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


class Gauges:
    """Publishes one reading per gauge per 5-min step of event time."""

    def __init__(self, broker: Mosquitto) -> None:
        self.publisher = Publisher(broker.host, broker.port, client_id="dispatch-gauges")
        self.step = 0

    def report(self, levels: dict[str, float]) -> None:
        ts = T0 + self.step * STEP
        self.publisher.publish([(s, "water_level", ts, v) for s, v in levels.items()])
        self.step += 1


def start_gateway(
    tmp: Path, broker: Mosquitto, routes: dict[str, Any], rule_file: Any = RULES, **kw: Any
) -> tuple[EngineProcess, str]:
    rules = tmp / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_file, allow_unicode=True))
    routing = tmp / "routing.yaml"
    routing.write_text(yaml.safe_dump(routes, sort_keys=False))
    port = free_port()
    settings = write_settings(
        tmp, broker.port, rules=[str(rules)], web_port=port,
        dispatch={"routes": str(routing), "link_secret_env": "VIGIL_TEST_LINK_SECRET",
                  "retry_initial_s": 0.2, "retry_max_s": 1.0},
        **kw,
    )  # fmt: skip
    engine = EngineProcess(settings, tmp / "engine.log")
    return engine, f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_TEST_HOOK_SECRET", SECRET)
    monkeypatch.setenv("VIGIL_TEST_LINK_SECRET", "link-secret-for-tests")


def _hook(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "url": url, "secret_env": "VIGIL_TEST_HOOK_SECRET",
            "retry": {"attempts": 1}, "timeout_s": 5}  # fmt: skip


def test_flood_is_grouped_signed_acknowledged_escalated_silenced_and_cleared(
    tmp_path: Path, mosquitto: Mosquitto, mailbox: tuple[int, Mailbox]
) -> None:
    smtp_port, box = mailbox
    with HttpReceiver() as hooks:
        routes = {
            "version": 1,
            "receivers": [
                _hook("duty", hooks.url + "/duty"),
                _hook("head", hooks.url + "/head"),
                {
                    "name": "mail",
                    "type": "email",
                    "host": "127.0.0.1",
                    "port": smtp_port,
                    "security": "none",
                    "from": "vigil@x.example",
                    "to": ["duty@x.example"],
                },
            ],
            "route": {
                "receivers": ["duty", "mail"],
                "group_by": ["basin"],
                "group_wait": "2s",
                "group_interval": "1s",
                "routes": [
                    {
                        "name": "red",
                        "matchers": ["level>=red"],
                        "receivers": ["duty"],
                        "escalation": [{"after": "15s", "receivers": ["head"], "name": "head"}],
                    }
                ],
            },
        }
        engine, url = start_gateway(tmp_path, mosquitto, routes)
        engine.start()
        gauges = Gauges(mosquitto)
        try:
            gauges.report({"HZ001": 4.0, "HZ002": 2.8, "HZ003": 2.0})
            # Two gauges cross together: one message for the basin, to the webhook and by mail.
            gauges.report({"HZ001": 4.8, "HZ002": 3.5, "HZ003": 2.0})
            first = wait_for("the basin's first message", lambda: notifications(hooks, "/duty"))
            assert len(first) == 1
            assert first[0]["group_labels"] == {"basin": "demo_river"}
            assert stations_in(first[0]) == {
                "HZ001": ("yellow", "firing"), "HZ002": ("yellow", "firing"),
            }  # fmt: skip
            assert all(a["ack_url"].startswith(url + "/ack/") for a in first[0]["alerts"])
            mail_key = first[0]["key"].replace("duty:", "mail:", 1)
            wait_for("the mail", lambda: box.messages)
            assert box.messages[0]["Message-ID"] == message_id(mail_key)

            # A silence holds HZ003 back: kept and listed as silenced, never sent.
            out = vigil_alerts(url, "silence", "station=HZ003", "--duration", "1h",
                               "--author", "ops", "--comment", "sensor under repair")  # fmt: skip
            assert out.startswith("s1: station=HZ003 until")
            gauges.report({"HZ001": 4.8, "HZ002": 3.5, "HZ003": 3.0})
            listed = wait_for(
                "HZ003 listed as silenced",
                lambda: (
                    "[silenced by s1]" in vigil_alerts(url, "list") and vigil_alerts(url, "list")
                ),
            )
            assert "HZ003" in listed

            # HZ001 goes red; the duty officer acknowledges it from the CLI at once.
            gauges.report({"HZ001": 6.8, "HZ002": 3.5, "HZ003": 3.0})
            red = wait_for(
                "HZ001 red",
                lambda: [n for n in notifications(hooks, "/duty")
                         if stations_in(n).get("HZ001") == ("red", "firing")],
            )  # fmt: skip
            hz001 = next(a for a in red[0]["alerts"] if a["station"] == "HZ001")
            out = vigil_alerts(url, "ack", hz001["fingerprint"][:10], "--by", "Li Wei",
                               "--note", "on my way")  # fmt: skip
            assert out.startswith(f"{hz001['fingerprint']}: acknowledged by Li Wei at ")
            # HZ002 goes red and nobody takes it: the head of section hears of it, of it alone.
            gauges.report({"HZ001": 6.8, "HZ002": 5.0, "HZ003": 3.0})
            escalated = wait_for("the escalation", lambda: notifications(hooks, "/head"))
            assert escalated[0]["note"].startswith("escalation step 1: head: unacknowledged for")
            assert stations_in(escalated[0]) == {"HZ002": ("red", "firing")}

            # The water falls: HZ001 clears, HZ002 stays (a red latches until somebody
            # takes it) ... The two all-clears come from different partitions and may
            # reach the dispatcher in different ticks, so the duty room may hear them in
            # one message or in two, in either order: wait for each.
            for _ in range(3):
                gauges.report({"HZ001": 4.0, "HZ002": 2.8, "HZ003": 2.0})
            wait_for(
                "HZ001's all-clear",
                lambda: [n for n in notifications(hooks, "/duty")
                         if stations_in(n).get("HZ001", ("", ""))[1] == "resolved"],
            )  # fmt: skip
            latched = wait_for(
                "HZ002 told as latched",
                lambda: [n for n in notifications(hooks, "/duty")
                         if "HZ002 latched: data cleared, stays until acknowledged" in n["note"]],
            )  # fmt: skip
            assert (latched[0]["status"], latched[0]["level"]) == ("firing", "red")
            held = next(a for a in latched[0]["alerts"] if a["station"] == "HZ002")
            assert (held["state"], held["latched"]) == ("resolved", "red")  # still in force
            # ... until someone takes it through the link in the message, no login needed.
            link = next(a["ack_url"] for a in latched[0]["alerts"] if a["station"] == "HZ002")
            page = httpx.get(link)
            assert page.status_code == 200 and "Acknowledge" in page.text
            done = httpx.post(link, data={"name": "Zhang Min"})
            assert "Acknowledged by Zhang Min." in done.text
            forged = httpx.post(link[:-3] + "AAA", data={"name": "x"})
            assert forged.status_code == 403
            cleared = wait_for(
                "the basin's all-clear",
                lambda: [n for n in notifications(hooks, "/duty") if n["status"] == "resolved"],
            )
            assert stations_in(cleared[0])["HZ002"] == ("none", "resolved")
            alerts = {a["station"]: a for a in httpx.get(url + "/api/alerts").json()["alerts"]}
            assert alerts["HZ001"]["acknowledged"]["by"] == "Li Wei"
            assert alerts["HZ001"]["acknowledged"]["note"] == "on my way"
            assert alerts["HZ002"]["acknowledged"]["by"] == "Zhang Min (link)"
            assert alerts["HZ002"]["status"] == "resolved"
            # Nothing of the silenced gauge went anywhere; the head heard only of HZ002.
            for n in notifications(hooks, "/duty") + notifications(hooks, "/head"):
                assert "HZ003" not in stations_in(n)
            assert all(set(stations_in(n)) == {"HZ002"} for n in notifications(hooks, "/head"))
        finally:
            gauges.publisher.close()
            engine.kill()


def _storm_registry(tmp: Path, n: int) -> Path:
    stations = [
        {"id": f"S{i:02d}", "kind": "river_gauge", "name": f"Gauge {i}", "basin": f"b{i % 3}",
         "district": "d", "report_interval": "5m", "metrics": {"water_level": "m"},
         "warning_level": 3.0, "guaranteed_level": 5.0, "historical_max_level": 9.0}
        for i in range(n)
    ]  # fmt: skip
    path = tmp / "stations.yaml"
    path.write_text(yaml.safe_dump({"stations": stations}))
    return path


def test_receiver_outage_and_sigkill_lose_nothing_and_repeat_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    n_stations, steps = 24, 16
    pattern = [2.0, 3.5, 5.5, 3.5, 2.0, 2.0]  # none, yellow, orange, yellow, none, none
    rules = {**RULES, "rules": [{**RULES["rules"][0], "levels": {
        "yellow": {"above": "station.warning_level"},
        "orange": {"above": "station.guaranteed_level"},
    }}]}  # fmt: skip
    port = free_port()
    servers = [HttpReceiver(port=port).__enter__()]
    routes = {
        "version": 1,
        "receivers": [_hook("duty", f"http://127.0.0.1:{port}/duty")],
        "route": {
            "receivers": ["duty"],
            "group_by": ["basin"],
            "group_wait": "1s",
            "group_interval": "1s",
        },
    }
    engine, url = start_gateway(
        tmp_path, mosquitto, routes, rules, stations=str(_storm_registry(tmp_path, n_stations))
    )
    engine.start()
    gauges = Gauges(mosquitto)
    kills = stops = 0
    try:
        for step in range(steps):
            gauges.report(
                {f"S{i:02d}": pattern[(step + i) % len(pattern)] for i in range(n_stations)}
            )
            if step == 3:  # the receiver goes away while the storm goes on
                wait_for("a first delivery", lambda: servers[0].requests)
                servers[0].__exit__(None, None, None)
                stops += 1
            if step in (6, 11):  # the gateway is killed mid-storm, and comes back
                time.sleep(1.0)  # let it make (and store) notifications it cannot deliver
                engine.kill()
                kills += 1
                engine.start()
            if step == 13:
                servers.append(HttpReceiver(port=port).__enter__())
        for _ in range(3):
            gauges.report({f"S{i:02d}": 1.0 for i in range(n_stations)})

        def settled() -> bool:
            alerts = httpx.get(url + "/api/alerts").json()["alerts"]
            outbox = httpx.get(url + "/api/outbox").json()
            last: dict[str, tuple[int, str]] = {}  # group -> (n, status) of its newest
            for r in (r for s in servers for r in s.requests):
                body = r.json()
                _, group, n = body["key"].split(":")
                last[group] = max(last.get(group, (0, "")), (int(n), body["status"]))
            return (
                all(a["status"] == "resolved" for a in alerts)
                and not any(outbox["pending"].values())
                and all(status == "resolved" for _, status in last.values())
            )

        wait_for("every alert cleared and told", settled, timeout=180)
        posts: list[Request] = [r for s in servers for r in s.requests]
        bodies = [r.json() for r in posts]
        by_key: dict[str, dict[str, Any]] = {}
        for body in bodies:
            by_key.setdefault(body["key"], body)  # a receiver that honours the key
        # At least once: only an entry in flight when its sender died (a kill, the
        # receiver's stop) may come twice, with its key.
        assert len(bodies) - len(by_key) <= kills + stops
        assert not httpx.get(url + "/api/outbox").json()["parked"]
        # Nothing lost: each group's messages are numbered 1..N with no gap.
        groups: dict[str, list[int]] = {}
        for key in by_key:
            _, group, n = key.split(":")
            groups.setdefault(group, []).append(int(n))
        assert len(groups) >= 3
        for group, numbers in groups.items():
            assert sorted(numbers) == list(range(1, len(numbers) + 1)), group
        # In order: first arrivals in the order they were made, and per group by number.
        firsts = list(by_key.values())
        assert [b["created_at"] for b in firsts] == sorted(b["created_at"] for b in firsts)
        for group in groups:
            seq = [int(k.split(":")[2]) for k in by_key if k.split(":")[1] == group]
            assert seq == sorted(seq), group
        # Nothing made twice: no two keys say the same thing.
        said = [
            (b["status"], b["note"], tuple(sorted(
                (a["fingerprint"], a["at"], a["level"], a["state"]) for a in b["alerts"])))
            for b in firsts
        ]  # fmt: skip
        assert len(said) == len(set(said))
        # And every gauge's last word, in each group it was told in, is its all-clear.
        for group in groups:
            mine = sorted(
                (b for k, b in by_key.items() if k.split(":")[1] == group),
                key=lambda b: int(b["key"].split(":")[2]),
            )
            assert mine[-1]["status"] == "resolved"
            last_word = {a["station"]: a["state"] for b in mine for a in b["alerts"]}
            assert set(last_word.values()) == {"resolved"}, last_word
        assert sum(len(v) for v in groups.values()) > 10
    finally:
        gauges.publisher.close()
        engine.kill()
        for server in servers[stops:]:
            server.__exit__(None, None, None)


def test_mqtt_sms_and_jsonl_receivers_in_the_gateway_and_its_api_from_afar(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration.test_dispatch_api import non_loopback_address
    from tests.integration.test_receiver_mqtt import Subscriber

    monkeypatch.setenv("VIGIL_TEST_API_TOKEN", "api-t0ken")
    boards = Subscriber(mosquitto, "vigil/#")
    with HttpReceiver(default_body=b'{"code": "OK"}') as sms:
        routes = {
            "version": 1,
            "receivers": [
                {"name": "boards", "type": "mqtt", "host": mosquitto.host,
                 "port": mosquitto.port, "client_id": "vigil-boards"},
                {"name": "phones", "type": "sms", "url": sms.url + "/sms/send",
                 "sign_name": "示例水文局", "templates": {"firing": "T1", "resolved": "T2"},
                 "params": {"where": "where", "level": "level", "station": "station"},
                 "recipients": ["13800001111"], "success_field": "code"},
                {"name": "log", "type": "jsonl", "path": "duty-log.jsonl"},
            ],
            "route": {"receivers": ["boards", "phones", "log"], "group_by": ["basin"],
                      "group_wait": "1s", "group_interval": "1s"},
        }  # fmt: skip
        engine, url = start_gateway(
            tmp_path,
            mosquitto,
            routes,
            web={"token_env": "VIGIL_TEST_API_TOKEN", "bind": "0.0.0.0"},  # reachable from afar
        )
        engine.start()
        gauges = Gauges(mosquitto)
        duty_log = tmp_path / "duty-log.jsonl"

        def logged() -> list[dict[str, Any]]:
            if not duty_log.exists():
                return []
            return [json.loads(line) for line in duty_log.read_text().splitlines()]

        try:
            gauges.report({"HZ001": 4.0, "HZ002": 2.8, "HZ003": 2.0})
            gauges.report({"HZ001": 4.8, "HZ002": 3.5, "HZ003": 2.0})
            # The SMS provider gets the firing template for the basin ...
            first = wait_for("the SMS", lambda: sms.requests)[0].json()
            assert first["template_id"] == "T1" and first["phones"] == ["13800001111"]
            assert first["params"]["where"] == "demo_river"
            assert first["params"]["level"] == "黄色预警"
            assert first["out_id"] == sms.requests[0].headers["idempotency-key"]
            # ... the boards a message per alert and a retained level per station ...
            boards.wait(lambda ms: {t for t, _, _ in ms} >= {
                "vigil/alerts/HZ001", "vigil/alerts/HZ002",
                "vigil/level/HZ001", "vigil/level/HZ002"})  # fmt: skip
            level = {t: p for t, p, _ in boards.messages if t.startswith("vigil/level/")}
            assert level["vigil/level/HZ001"]["level"] == "yellow"
            # ... and the duty log a line, its key the SMS's.
            [line] = wait_for("the duty log", logged)
            assert line["key"].split(":")[1:] == first["out_id"].split(":")[1:]
            assert {a["station"] for a in line["alerts"]} == {"HZ001", "HZ002"}

            # The API from afar: this machine's own non-loopback address, the real bind.
            far = non_loopback_address()
            assert far is not None, "this machine has no non-loopback address to call from"
            far_url = url.replace("127.0.0.1", far)
            assert httpx.get(far_url + "/api/alerts").status_code == 401
            bad = {"Authorization": "Bearer nope"}
            assert httpx.get(far_url + "/api/alerts", headers=bad).status_code == 401
            good = {"Authorization": "Bearer api-t0ken"}
            listed = httpx.get(far_url + "/api/alerts", headers=good)
            assert listed.status_code == 200 and len(listed.json()["alerts"]) == 2

            for _ in range(3):  # the water falls: all-clears on every channel
                gauges.report({"HZ001": 4.0, "HZ002": 2.8, "HZ003": 2.0})
            wait_for("the SMS all-clear", lambda: any(r.json()["template_id"] == "T2"
                                                       for r in sms.requests))  # fmt: skip
            boards.wait(lambda ms: any(
                t == "vigil/level/HZ001" and p["level"] == "none" for t, p, _ in ms))  # fmt: skip
            cleared = wait_for(
                "the log's all-clear", lambda: [n for n in logged() if n["status"] == "resolved"]
            )
            assert {a["state"] for a in cleared[0]["alerts"]} == {"resolved"}
            assert len({n["key"] for n in logged()}) == len(logged())  # each key once
            # The receiver's confirmation is marked just after it arrives: the outbox
            # drains, nothing parked.
            outbox = wait_for(
                "the outbox drained",
                lambda: (
                    (o := httpx.get(url + "/api/outbox", headers=good).json())
                    and not any(o["pending"].values())
                    and o
                ),
            )
            assert not outbox["parked"]
        finally:
            gauges.publisher.close()
            engine.kill()
            boards.close()

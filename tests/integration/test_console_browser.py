"""The duty room's page (``engine/runtime/dispatch/console.py``) in a real browser:
Debian's Chromium driven by Playwright against a running gateway (``vigil run``) that
real mosquitto feeds, with a real HTTP receiver for the notifications.

Screenshots go to ``$VIGIL_ARTIFACTS`` (default: ``build/artifacts/console`` in the
checkout), for a person to look at after the run."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from playwright.sync_api import Page, expect, sync_playwright

from connectors.mqtt.mosquitto import Mosquitto
from tests.integration.http_receiver import HttpReceiver
from tests.integration.test_dispatch_gateway import (
    SECRET,
    Gauges,
    _hook,
    _storm_registry,
    notifications,
    start_gateway,
    stations_in,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
QUIET = {"HZ001": 4.0, "HZ002": 2.8, "HZ003": 2.0}  # every gauge below its warning level


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_TEST_HOOK_SECRET", SECRET)
    monkeypatch.setenv("VIGIL_TEST_LINK_SECRET", "link-secret-for-tests")


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "Debian's chromium is not installed (make system-deps installs it)"
    return path


def shot(page: Page, name: str, *, full_page: bool = True) -> None:
    out = Path(os.environ.get("VIGIL_ARTIFACTS", ROOT / "build" / "artifacts" / "console"))
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / f"{name}.png"), full_page=full_page)


@contextmanager
def live_console(url: str, before: Callable[[Page], object] | None = None) -> Iterator[Page]:
    """The duty room's page at ``url`` (a gateway's or a worker's) in Debian's Chromium,
    once its live stream is up; ``before``: called with the page before it is loaded (a
    clock to install, a listener). The browser closes when the block ends."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium())
        page = browser.new_page(locale="en-GB", viewport={"width": 1400, "height": 900})
        if before is not None:
            before(page)
        page.goto(url + "/console")
        expect(page.locator("#live")).to_have_text("live", timeout=30_000)
        yield page
        browser.close()


def api_alert(url: str, station: str) -> dict[str, Any]:
    rows = httpx.get(url + "/api/alerts", timeout=30).json()["alerts"]
    return next(r for r in rows if r["station"] == station and r["status"] != "closed")


def test_alerts_live_acknowledged_and_silenced_from_the_page(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with HttpReceiver() as hooks:
        routes = {
            "version": 1,
            "receivers": [_hook("duty", hooks.url + "/duty"), _hook("head", hooks.url + "/head")],
            "route": {
                "receivers": ["duty"], "group_by": ["station"], "group_wait": "0s",
                "group_interval": "1s",
                "routes": [{"name": "red", "matchers": ["level>=red"], "receivers": ["duty"],
                            "escalation": [{"after": "20s", "receivers": ["head"],
                                            "name": "head"}]}],
            },
        }  # fmt: skip
        engine, url = start_gateway(tmp_path, mosquitto, routes)
        engine.start()
        gauges = Gauges(mosquitto)
        try:
            with live_console(url) as page:
                page.fill("#who", "Li Wei")
                page.dispatch_event("#who", "change")
                page.evaluate("window.notReloaded = true")
                gauges.report(QUIET)

                # Two gauges go red: both appear without a reload, worst first.
                sent = time.monotonic()
                gauges.report({"HZ001": 6.8, "HZ002": 5.0, "HZ003": 2.0})
                hz002 = page.locator('#alerts tr[data-station="HZ002"]')
                hz002.wait_for(timeout=60_000)
                print(f"HZ002's red on the page {time.monotonic() - sent:.2f} s after publishing")
                expect(page.locator('#alerts tr[data-station="HZ001"]')).to_be_visible()
                assert page.evaluate("window.notReloaded") is True
                expect(hz002.locator(".lvl")).to_have_text("red")
                # The value's trace over the last hours: the quiet reading, then the red.
                expect(hz002.locator("svg.sparkline polyline")).to_have_count(1)
                expect(hz002.locator("svg.sparkline")).to_have_attribute("data-points", "2")
                # The station table: last value with its unit, when, QC state.
                station = page.locator('#stations tr[data-station="HZ002"]')
                expect(station.locator(".last-value")).to_have_text("water_level 5 m")
                expect(station.locator(".last-seen")).to_contain_text("2024")
                expect(station.locator(".qc")).to_have_text("ok")
                shot(page, "1-red")

                # Dead letters by reason from the gateway's counts, the newest on demand.
                gauges.publisher.publish_raw("vigil/HZ003/water_level", b"not json at all")
                dead = page.locator('#dead tr[data-reason="not_json"]')
                dead.wait_for(timeout=60_000)
                expect(dead.locator("td").nth(1)).to_have_text("1")
                dead.get_by_role("button", name="Newest").click()
                expect(page.locator("#dead-newest tbody tr")).to_have_count(1)
                expect(page.locator("#dead-newest tbody")).to_contain_text("not json at all")

                # The duty officer takes HZ002 from the page: shown, stored, not escalated.
                hz002.get_by_role("button", name="Acknowledge").click()
                page.fill("#act-text", "patrol sent")
                page.click("#act-ok")
                expect(hz002.locator(".taken")).to_contain_text("Li Wei")
                expect(hz002.locator(".taken")).to_contain_text("patrol sent")
                ack = api_alert(url, "HZ002")["acknowledged"]
                assert (ack["by"], ack["note"]) == ("Li Wei", "patrol sent")
                escalated = wait_for("HZ001's escalation", lambda: notifications(hooks, "/head"))
                assert [stations_in(n) for n in escalated] == [{"HZ001": ("red", "firing")}]

                # A silence set on HZ003's station row: its new alert is listed as silenced,
                # not among the active ones, and told to nobody.
                row = page.locator('#stations tr[data-station="HZ003"]')
                row.get_by_role("button", name="Silence").click()
                page.fill("#act-dur", "1h")
                page.fill("#act-text", "sensor under repair")
                page.click("#act-ok")
                expect(page.locator("#silences tbody tr")).to_have_count(1)
                expect(page.locator("#silences tbody tr")).to_contain_text("station=HZ003")
                expect(row.locator("td.silenced-by")).not_to_be_empty()
                gauges.report({"HZ001": 6.8, "HZ002": 5.0, "HZ003": 3.0})
                silenced = page.locator('#silenced-alerts tr[data-station="HZ003"]')
                silenced.wait_for(timeout=60_000)
                expect(page.locator('#alerts tr[data-station="HZ003"]')).to_have_count(0)
                shot(page, "2-acknowledged-and-silenced")
                time.sleep(3)  # a few of the dispatcher's ticks: room for a wrong notification
                told = [s for n in notifications(hooks, "/duty") for s in stations_in(n)]
                assert "HZ003" not in told
                assert not any("HZ002" in stations_in(n) for n in notifications(hooks, "/head"))

                # The page in Chinese.
                page.select_option("#lang", "zh")
                expect(page.locator("h1")).to_have_text("Vigil 值班室")
                expect(page.locator("#live")).to_have_text("实时")
                expect(hz002.locator(".lvl")).to_have_text("红色")
                shot(page, "3-zh")
        finally:
            engine.kill()


def checkpoints(url: str) -> int:
    """Kernel checkpoints the gateway has written (each with its telemetry offsets)."""
    status = httpx.get(url + "/vigil/status", timeout=30).json()
    return int(status["lag"]["checkpoints_written"])


def test_the_page_shows_the_same_board_after_a_sigkill_and_then_new_readings_at_once(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The page open across a restart. A station's last value and an alert's sparkline
    are on it; once the gateway has committed the offsets of those readings (so that the
    restart does not replay them: only the board's read-back of the log brings them
    back) it is SIGKILLed and started again on the same port. The page reconnects its
    stream by itself, without a reload, and shows the same. Then a new reading that
    changes no alert: the page's own timers are stopped and the dispatcher stores
    nothing new (it ticks once a minute, and no alert changes), so only the stream's
    ``readings`` event can bring it, and it does."""
    routes = {
        "version": 1,
        "receivers": [{"name": "log", "type": "jsonl", "path": "notifications.jsonl"}],
        "route": {"receivers": ["log"], "group_by": ["station"], "group_wait": "0s"},
    }
    engine, url = start_gateway(tmp_path, mosquitto, routes, silence_tick_s=1.0)
    settings = yaml.safe_load(engine.config.read_text())
    settings["dispatch"]["tick_s"] = 60  # no idle store (a ``change``) during the test
    engine.config.write_text(yaml.safe_dump(settings, sort_keys=False))
    engine.start()
    gauges = Gauges(mosquitto)
    try:
        # The page's timers installed before it loads, to be stopped below.
        with live_console(url, before=lambda page: page.clock.install()) as page:
            page.evaluate("window.notReloaded = true")
            gauges.report(QUIET)
            gauges.report({"HZ001": 6.8, "HZ002": 5.0, "HZ003": 2.0})
            alert = page.locator('#alerts tr[data-station="HZ002"]')
            station = page.locator('#stations tr[data-station="HZ002"]')
            expect(alert.locator("svg.sparkline")).to_have_attribute(
                "data-points", "2", timeout=60_000
            )
            expect(station.locator(".last-value")).to_have_text("water_level 5 m")
            before = {
                "value": station.locator(".last-value").inner_text(),
                "seen": station.locator(".last-seen").inner_text(),
                "trace": alert.locator("svg.sparkline polyline").get_attribute("points"),
            }
            assert "2024" in before["seen"] and before["trace"], before
            # Each commit writes both partitions' checkpoints (ticks move them every
            # second) with their offsets: three commits on, those readings are in.
            written = checkpoints(url)
            wait_for("three more commits", lambda: checkpoints(url) >= written + 6)

            engine.kill()
            expect(page.locator("#live")).to_have_text("offline", timeout=30_000)
            engine.start()  # the same settings: the same port
            expect(page.locator("#live")).to_have_text("live", timeout=60_000)
            expect(station.locator(".last-value")).to_have_text(before["value"], timeout=30_000)
            expect(station.locator(".last-seen")).to_have_text(before["seen"])
            expect(alert.locator("svg.sparkline")).to_have_attribute("data-points", "2")
            polyline = alert.locator("svg.sparkline polyline")
            expect(polyline).to_have_attribute("points", before["trace"])
            assert page.evaluate("window.notReloaded") is True
            shot(page, "5-after-sigkill")

            # The page's timers stop (its 10 s reload among them); one reload in flight
            # finishes before the reading is sent.
            page.clock.pause_at(page.evaluate("Date.now()") + 1000)
            page.evaluate("requestRefresh()")
            gauges.report({"HZ002": 5.1})
            expect(station.locator(".last-value")).to_have_text("water_level 5.1 m", timeout=30_000)
            expect(alert.locator("svg.sparkline")).to_have_attribute("data-points", "3")
            assert page.evaluate("window.notReloaded") is True
    finally:
        gauges.publisher.close()
        engine.kill()


def test_the_page_stays_live_in_a_storm_of_a_thousand_stations(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A thousand gauges report every step, two hundred of them above the warning level
    (two hundred yellow alerts on the page, a thousand rows in the station table); one
    more crossing still reaches the page through the live stream, without a reload. The
    latency is printed (and the time one full redraw takes), not asserted."""
    n, firing = 1000, 200
    with HttpReceiver() as hooks:
        routes = {
            "version": 1,
            "receivers": [_hook("duty", hooks.url + "/duty")],
            "route": {"receivers": ["duty"], "group_by": ["basin"], "group_wait": "1s",
                      "group_interval": "5s"},
        }  # fmt: skip
        engine, url = start_gateway(
            tmp_path, mosquitto, routes, stations=str(_storm_registry(tmp_path, n))
        )
        engine.start()
        gauges = Gauges(mosquitto)
        levels = {f"S{i:02d}": (3.5 if i < firing else 2.0) for i in range(n)}
        try:
            asked: list[str] = []  # every URL the page requests, from its first load

            def listen(page: Page) -> None:
                page.on("request", lambda r: asked.append(r.url))

            with live_console(url, before=listen) as page:
                page.evaluate("window.notReloaded = true")
                gauges.report({s: 2.0 for s in levels})
                for _ in range(2):  # the second report closes the first's window
                    gauges.report(levels)
                expect(page.locator("#alerts tbody tr")).to_have_count(firing, timeout=120_000)
                expect(page.locator("#stations tbody tr")).to_have_count(n)

                # One more gauge crosses while the two hundred stay up. The page notes
                # (wall clock, ms) when its row appears, to compare with the moment the
                # dispatcher received the alert.
                crossing = f"S{n - 1:02d}"
                page.evaluate(
                    """station => new MutationObserver((_, seen) => {
                      if (document.querySelector(`#alerts tr[data-station="${station}"]`)) {
                        window.shownAt = Date.now(); seen.disconnect();
                      }
                    }).observe(document.querySelector("#alerts tbody"), {childList: true})""",
                    crossing,
                )
                gauges.report({**levels, crossing: 9.5})
                sent = time.monotonic()
                gauges.report({**levels, crossing: 9.5})
                row = page.locator(f'#alerts tr[data-station="{crossing}"]')
                row.wait_for(timeout=60_000)
                latency = time.monotonic() - sent
                expect(row.locator(".lvl")).to_have_text("red")
                # Its five reports, one per 5 minutes: the three quiet ones and the two reds.
                # The other gauges' fifth reports can close its window before its own
                # arrives (another batch): then the last point comes with the stream's
                # next ``readings`` event, not with the alert.
                expect(row.locator("svg.sparkline")).to_have_attribute(
                    "data-points", "5", timeout=30_000
                )
                expect(page.locator("#alerts tbody tr")).to_have_count(firing + 1)
                # Each change reloads the alerts and stations; the dead letters are the
                # status's counts, never the topic read back (it may hold millions).
                assert any("/vigil/status" in u for u in asked)
                assert not [u for u in asked if "/vigil/dead-letters" in u]
                assert page.evaluate("window.notReloaded") is True
                expect(page.locator("#live")).to_have_text("live")
                received = api_alert(url, crossing)["received_at"]
                after_receipt = page.evaluate("window.shownAt") - received
                redraw_ms = page.evaluate(
                    "async () => { const t = performance.now(); await requestRefresh();"
                    " return performance.now() - t; }"
                )
                print(
                    f"storm of {n} stations, {firing} alerts: {crossing}'s red on the page"
                    f" {latency:.2f} s after the report that closed its window,"
                    f" {after_receipt} ms after the dispatcher received it;"
                    f" one full redraw {redraw_ms:.0f} ms"
                )
                shot(page, "4-storm", full_page=False)  # the whole page is 38,000 px tall
        finally:
            engine.kill()

"""The duty room's page on the Kafka runtime: two ``vigil worker`` processes with the
dispatcher on a real Kafka; the page is opened on the worker that does NOT own the
dispatcher, in Debian's Chromium. Its own files it serves itself; ``/api/stations`` and
the live stream ``/api/stream`` it passes on to the owner (``X-Vigil-Served-By``), so an
alert shows up live there as on the owner's page."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from engine.runtime.dispatch.forwarding import SERVED_BY
from tests.integration.http_receiver import HttpReceiver
from tests.integration.kafka_load import WorkerProcess
from tests.integration.test_console_browser import live_console, shot
from tests.integration.test_dispatch_gateway import wait_for
from tests.integration.test_dispatch_kafka import STEP, T0, Workers, _took_over, hooks

__all__ = ["hooks"]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_page_on_a_worker_that_does_not_own_the_dispatcher(
    kafka_bootstrap: str, tmp_path: Path, hooks: HttpReceiver
) -> None:
    ws = Workers(kafka_bootstrap, tmp_path, hooks)
    with ws.watched():
        w1, w2 = ws.start_ready("w1", "w2")
        ws.produce([("HZ001", "water_level", T0, 2.0)])
        wait_for(
            "a worker to own the dispatcher",
            lambda: any(_took_over(w) is not None for w in (w1, w2)),
            timeout=120,
        )

        def passed_on() -> tuple[WorkerProcess, httpx.Response] | None:
            """(a worker, its answer) once one passes ``/api/stations`` to the other
            (a rebalance may still move the dispatcher after it is first taken: a worker
            taking it over may find itself named the owner and answer its own request)."""
            for w in (w1, w2):
                r = httpx.get(f"http://127.0.0.1:{w.web_port}/api/stations", timeout=30)
                by = r.headers.get(SERVED_BY, "")
                if r.status_code == 200 and by and not by.endswith(f":{w.web_port}"):
                    return w, r
            return None

        other, listed = wait_for("a worker to pass the page's API on", passed_on, timeout=120)
        owner = w2 if other is w1 else w1
        url = f"http://127.0.0.1:{other.web_port}"
        assert listed.headers[SERVED_BY].endswith(f":{owner.web_port}")
        assert {s["id"] for s in listed.json()["stations"]} == {"HZ001", "NB101"}
        page_html = httpx.get(url + "/console", timeout=30)
        assert page_html.status_code == 200 and SERVED_BY not in page_html.headers
        with httpx.stream("GET", url + "/api/stream", timeout=30) as stream:
            assert stream.headers[SERVED_BY].endswith(f":{owner.web_port}")
            lines = stream.iter_lines()
            assert [next(lines) for _ in range(2)] == ["retry: 1000", "event: change"]

        with live_console(url) as page:
            # A red at HZ001 (the next report closes its window): on the page, live.
            # (From another thread: Playwright's sync API holds this thread's event loop.)
            with ThreadPoolExecutor(1) as other_thread:
                other_thread.submit(ws.produce, [("HZ001", "water_level", T0 + STEP, 5.0)]).result()
                sent = time.monotonic()
                other_thread.submit(
                    ws.produce, [("HZ001", "water_level", T0 + 2 * STEP, 5.0)]
                ).result()
            row = page.locator('#alerts tr[data-station="HZ001"]')
            row.wait_for(timeout=90_000)
            print(f"HZ001's red on the non-owner's page {time.monotonic() - sent:.2f} s later")
            expect(row.locator(".lvl")).to_have_text("red")
            expect(page.locator('#stations tr[data-station="HZ001"] .lvl')).to_have_text("red")
            shot(page, "kafka-non-owner")

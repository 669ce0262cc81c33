"""A gateway restarted, by SIGTERM and then by SIGKILL, while an alert is firing and
acknowledged: after each restart the dispatcher's state (the alert, its acknowledgement,
the outbox) and what the duty-room page reads (``/api/alerts``, ``/api/stations`` with
each station's last readings and the alerting one's sparkline, read back from the
telemetry log) are what they were before, and nobody is told of the acknowledged alert
again.

Real parts: mosquitto, ``vigil run``, an HTTP receiver. "Not told again" is shown by
something later that would have come after it: another gauge, red after the restarts,
gets its repeat and its escalation; the acknowledged one, due earlier, would have been
sent first (a group of one station each, so neither covers the other)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.mqtt.mosquitto import Mosquitto
from tests.integration.http_receiver import HttpReceiver
from tests.integration.test_dispatch_gateway import (
    SECRET,
    Gauges,
    _hook,
    notifications,
    start_gateway,
    stations_in,
    wait_for,
)


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_TEST_HOOK_SECRET", SECRET)
    monkeypatch.setenv("VIGIL_TEST_LINK_SECRET", "link-secret-for-tests")


def _view(url: str) -> dict[str, Any]:
    """What the API and the duty-room page show of the dispatcher's state."""

    def get(path: str) -> Any:
        r = httpx.get(url + path, timeout=30)
        r.raise_for_status()
        return r.json()

    alerts, outbox, stations = (
        get("/api/alerts")["alerts"],
        get("/api/outbox"),
        get("/api/stations")["stations"],
    )
    return {
        "alerts": alerts,
        "pending": outbox["pending"],
        "parked": outbox["parked"],
        "unmarked": outbox["unmarked"],
        "stations": {
            s["id"]: (s["level"], s["silenced"], s["readings"], s["spark"]) for s in stations
        },
    }


def _up(url: str) -> dict[str, Any] | None:
    try:
        return _view(url)
    except httpx.HTTPError:
        return None


def test_restarts_keep_an_acknowledged_alert_acknowledged_and_quiet(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with HttpReceiver() as hooks:
        routes = {
            "version": 1,
            "receivers": [_hook("duty", hooks.url + "/duty"), _hook("head", hooks.url + "/head")],
            "route": {
                "receivers": ["duty"],
                "group_by": ["station"],
                "group_wait": "0s",
                "group_interval": "1s",
                "repeat_interval": "6s",
                "escalation": [{"after": "10s", "receivers": ["head"], "name": "head"}],
            },
        }
        engine, url = start_gateway(tmp_path, mosquitto, routes)
        engine.start()
        gauges = Gauges(mosquitto)
        try:
            # HZ001 goes red (above 6.52 m); its next report closes the window.
            gauges.report({"HZ001": 6.8})
            gauges.report({"HZ001": 6.8})
            told = wait_for("HZ001's red", lambda: notifications(hooks, "/duty"))
            assert stations_in(told[0]) == {"HZ001": ("red", "firing")}
            fingerprint = told[0]["alerts"][0]["fingerprint"]
            acked = httpx.post(
                f"{url}/api/alerts/{fingerprint}/ack", json={"by": "Li Wei", "note": "on it"}
            )
            assert acked.status_code == 200, acked.text
            ack_at = acked.json()["alert"]["acknowledged"]["at"]

            def drained() -> dict[str, Any] | None:
                view = _up(url)
                if view and not any(view["pending"].values()) and view["unmarked"] == 0:
                    return view
                return None

            before = wait_for("the outbox drained", drained)
            (alert,) = before["alerts"]
            assert alert["status"] == "acknowledged", alert
            assert alert["acknowledged"]["by"] == "Li Wei"
            level, _, readings, spark = before["stations"]["HZ001"]
            assert level == "red"
            assert readings["water_level"]["value"] == 6.8
            assert [v for _, v in spark["water_level"]] == [6.8, 6.8]

            # SIGTERM: a clean stop, then SIGKILL: no chance to store anything at the end.
            assert engine.terminate() == 0, (tmp_path / "engine.log").read_text()
            engine.start()
            after_term = wait_for("the API after SIGTERM", lambda: _up(url))
            assert after_term == before
            engine.kill()
            engine.start()
            after_kill = wait_for("the API after SIGKILL", lambda: _up(url))
            assert after_kill == before

            # HZ002 goes red now, and nobody takes it: it repeats and escalates. HZ001
            # (its repeat and escalation due earlier) would have come before each.
            gauges.report({"HZ001": 6.8, "HZ002": 5.0})
            gauges.report({"HZ001": 6.8, "HZ002": 5.0})

            def hz002(path: str) -> list[dict[str, Any]]:
                return [n for n in notifications(hooks, path) if "HZ002" in stations_in(n)]

            wait_for("HZ002's repeat", lambda: len(hz002("/duty")) >= 2, timeout=120)
            wait_for("HZ002's escalation", lambda: hz002("/head"), timeout=120)
            about_hz001 = [
                n
                for path in ("/duty", "/head")
                for n in notifications(hooks, path)
                if "HZ001" in stations_in(n)
            ]
            assert [n["key"] for n in about_hz001] == [told[0]["key"]], about_hz001
            assert all(n["created_at"] < ack_at for n in about_hz001)
            (still,) = [a for a in _view(url)["alerts"] if a["station"] == "HZ001"]
            assert still == alert
            # Each key arrived once: nothing in flight was cut by the restarts.
            keys = [r.headers["idempotency-key"] for r in hooks.requests]
            assert len(keys) == len(set(keys)), keys
        finally:
            gauges.publisher.close()
            engine.kill()

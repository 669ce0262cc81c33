"""The Kafka worker's web port serves what the gateway's does: ``/metrics`` (with Faust's
commit latency), ``/readyz``, ``/vigil/status`` and ``/vigil/dead-letters`` (the dead
letters ingest wrote to the cluster); ``vigil status --url`` and ``vigil dead-letters
--url`` read it. ``vigil ingest mqtt --web-port`` serves ``/metrics``, ``/healthz`` and
``/readyz`` of its own. Both behind the web port's one access rule (a token is set):
every route family refused without it, an acknowledge link open by its signature and
pointing at the port the worker serves on (its ``--web-port``, not the settings').

Real mosquitto, a real Kafka broker, ``vigil ingest mqtt`` and ``vigil worker`` as child
processes. A machine without them fails this test, it never skips.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from connectors.mqtt.mosquitto import Mosquitto, free_port
from tests.integration.conftest import mosquitto_pub
from tests.integration.test_kafka_ingest import Vigil, _settings, _wait_alerts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = 1_719_763_200_000
TOKEN = "kafka-web-t0ken"
RIGHT = {"Authorization": f"Bearer {TOKEN}"}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _refused_without_token(url: str, paths: list[str]) -> None:
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer nope"}):
            got = httpx.get(url + path, headers=headers, timeout=10)
            assert got.status_code == 401, (url, path, got.text)


def test_the_kafka_workers_web_port_serves_metrics_readiness_and_status(
    kafka_bootstrap: str, mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_id = f"vigil-obs-{uuid.uuid4().hex[:8]}"
    config = _settings(tmp_path, mosquitto.port, app_id)
    routing = tmp_path / "routing.yaml"
    routing.write_text(yaml.safe_dump({
        "version": 1,
        "receivers": [{"name": "log", "type": "jsonl", "path": "duty-log.jsonl"}],
        "route": {"receivers": ["log"], "group_by": ["basin"], "group_wait": "0s"},
    }))  # fmt: skip
    settings = yaml.safe_load(config.read_text())
    settings["web_port"] = free_port()  # the worker serves on --web-port instead
    settings["web"] = {"token_env": "VIGIL_TEST_WEB_TOKEN"}
    settings["dispatch"] = {"routes": str(routing), "link_secret_env": "VIGIL_TEST_LINK_SECRET"}
    config.write_text(yaml.safe_dump(settings))
    monkeypatch.setenv("VIGIL_TEST_WEB_TOKEN", TOKEN)
    monkeypatch.setenv("VIGIL_TEST_LINK_SECRET", "link-secret-for-tests")
    broker = f"kafka://{kafka_bootstrap}"
    port, ingest_port = free_port(), free_port()
    ingest = Vigil(tmp_path, "ingest", "ingest", "mqtt", "--config", str(config), "--broker",
                   broker, "--web-port", str(ingest_port))  # fmt: skip
    worker = Vigil(tmp_path, "worker", "worker", "--config", str(config), "--broker", broker,
                   "--web-port", str(port))  # fmt: skip
    try:
        ingest.wait_for("ingest subscribed", timeout=120)
        ingest_url = f"http://127.0.0.1:{ingest_port}"
        _refused_without_token(ingest_url, ["/metrics", "/healthz", "/readyz"])
        assert httpx.get(ingest_url + "/healthz", headers=RIGHT).json() == {"status": "alive"}
        ready = httpx.get(ingest_url + "/readyz", headers=RIGHT)
        assert ready.status_code == 200, ready.text
        assert list(ready.json()["checks"]) == ["ingest"]
        assert ready.json()["checks"]["ingest"]["detail"].startswith("MQTT subscribed")
        for minute, value in ((0, 1.0), (5, 3.5), (10, 3.5), (15, 3.5), (20, 3.5)):
            reading = json.dumps({"value": value, "ts": T0 + minute * 60_000})
            mosquitto_pub(mosquitto, "vigil/HZ003/water_level", reading)
        alerts = _wait_alerts(tmp_path / "alerts.jsonl", worker, timeout=120)

        web = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=RIGHT)
        _refused_without_token(
            f"http://127.0.0.1:{port}",
            ["/metrics", "/healthz", "/readyz", "/vigil/status", "/vigil/dead-letters",
             "/vigil/lag/", "/api/alerts"],
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            samples = _samples(web.get("/metrics").text)
            commits = samples.get(("vigil_consumer_commit_seconds_count", ()), 0)
            if samples.get(("vigil_readings_evaluated_total", ())) == 5 and commits > 0:
                break
            assert time.monotonic() < deadline, f"worker /metrics: {samples}"
            time.sleep(0.2)
        # Ingest's own port counted what it appended (all 5, as the worker evaluated 5).
        ingested = _samples(httpx.get(ingest_url + "/metrics", headers=RIGHT).text)
        kind = (("connector", "mqtt"), ("kind", "river_gauge"))
        assert ingested[("vigil_readings_received_total", kind)] == 5
        assert ingested[("vigil_ingest_append_seconds_count", (("connector", "mqtt"),))] >= 1
        assert ingested[("vigil_mqtt_connected", ())] == 1
        assert ingested[("process_resident_memory_bytes", ())] > 0
        assert ("vigil_readings_evaluated_total", ()) not in ingested  # the worker's job

        key = ("vigil_alert_events_total", (("level", "orange"), ("rule", "flood.river_level")))
        assert samples[key] == sum(1 for a in alerts if a.level == "orange")
        assert {k[1] for k in samples if k[0] == "vigil_consumer_lag_batches"} == {
            (("partition", "0"),),
            (("partition", "1"),),
        }
        assert samples[("process_resident_memory_bytes", ())] > 0
        assert ("vigil_mqtt_connected", ()) not in samples  # ingest is another process

        ready = web.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert set(ready.json()["checks"]) == {"rules", "lag"}

        # Dead letters, written by ingest (another process) to the cluster.
        mosquitto_pub(mosquitto, "vigil/HZ003/water_level", "not json at all")
        mosquitto_pub(mosquitto, "vigil/NOPE1/water_level", json.dumps({"value": 1.0, "ts": T0}))
        deadline = time.monotonic() + 60
        while True:
            page = web.get("/vigil/dead-letters")
            assert page.status_code == 200, page.text
            records = page.json()["records"]
            if len(records) >= 2:
                break
            assert time.monotonic() < deadline, f"worker /vigil/dead-letters: {page.json()}"
            time.sleep(0.5)
        assert [(r["class"], r["source"]) for r in records] == [
            ("not_json", "vigil/HZ003/water_level"),
            ("unknown_station", "vigil/NOPE1/water_level"),
        ]
        assert page.json()["next"] == page.json()["end"] == 2
        unknown = web.get("/vigil/dead-letters", params={"reason": "unknown_station"}).json()
        assert [r["offset"] for r in unknown["records"]] == [1]
        ingested = _samples(httpx.get(ingest_url + "/metrics", headers=RIGHT).text)
        assert ingested[("vigil_dead_letters_total", (("reason", "not_json"),))] == 1
        assert ingested[("vigil_dead_letters_total", (("reason", "unknown_station"),))] == 1

        # The dispatcher's notification links to this worker's port; the link needs no token.
        duty_log = tmp_path / "duty-log.jsonl"
        deadline = time.monotonic() + 120
        while not (duty_log.exists() and duty_log.read_text().strip()):
            assert time.monotonic() < deadline, f"no notification:\n{worker.tail()}"
            time.sleep(0.5)
        link = json.loads(duty_log.read_text().splitlines()[0])["alerts"][0]["ack_url"]
        assert link.startswith(f"http://127.0.0.1:{port}/ack/"), link
        page = httpx.get(link, timeout=30)
        assert page.status_code == 200 and "Acknowledge" in page.text, page.text
        assert httpx.get(link[:-3] + "AAA", timeout=30).status_code == 403
        listed = subprocess.run(
            [sys.executable, "-m", "engine.tools.cli", "dead-letters", "--url",
             f"http://127.0.0.1:{port}", "--json", "--token-env", "VIGIL_TEST_WEB_TOKEN"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert [json.loads(line) for line in listed.stdout.splitlines()] == records

        status = subprocess.run(
            [sys.executable, "-m", "engine.tools.cli", "status", "--url", f"http://127.0.0.1:{port}",
             "--token-env", "VIGIL_TEST_WEB_TOKEN"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"{app_id} (pid {worker.proc.pid}" in status.stdout
        assert "(none in this process)" in status.stdout
        assert worker.terminate() == 0, worker.tail()
        assert ingest.terminate() == 0, ingest.tail()
    finally:
        worker.kill()
        ingest.kill()

"""The dispatcher on the Kafka runtime: two ``vigil worker`` processes on a real Kafka,
readings produced straight to the telemetry topic, a real HTTP receiver (webhooks) and
the ``vigil alerts`` CLI. One worker at a time owns the dispatcher; it is SIGKILLed
after a delivery, the other takes over with the state and the outbox. Clocks are real;
every wait polls for its condition, and each "did not happen" is shown by something
later that would have come after it (a receiver's deliveries are in order). A second
failover, to a third worker, restores the acknowledgement."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from connectors.mqtt.mosquitto import free_port
from engine.runtime.dispatch.forwarding import SERVED_BY
from engine.runtime.kafka.producer import TelemetryProducer
from engine.runtime.kafka.topics import TopicLayout
from tests.integration.http_receiver import HttpReceiver
from tests.integration.kafka_load import WorkerProcess, create_topics
from tests.integration.test_dispatch_gateway import RULES, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "hook-secret-for-kafka-tests"
T0 = 1_719_792_000_000
STEP = 300_000
PARTITIONS = 4
#: Longer than a failover takes here (session timeout 10 s, a rebalance, a restore),
#: so that the first alert is acknowledged through the new owner before it escalates.
ESCALATE_AFTER = "90s"


def _station(sid: str, basin: str) -> dict[str, Any]:
    return {
        "id": sid, "kind": "river_gauge", "name": sid, "basin": basin, "district": basin,
        "lat": 30.0, "lon": 120.0, "elevation": 10.0, "report_interval": "5m",
        "metrics": {"water_level": "m"},
        "warning_level": 3.0, "guaranteed_level": 3.5, "historical_max_level": 4.5,
    }  # fmt: skip


def _hook(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "url": url, "secret_env": "VIGIL_TEST_HOOK_SECRET",
            "retry": {"attempts": 1}, "timeout_s": 5}  # fmt: skip


class Workers:
    """Two workers of one app id, with the dispatcher, on the session's Kafka."""

    @contextlib.contextmanager
    def watched(self) -> Iterator[Workers]:
        """A test's block: the workers' logs printed if it fails, every worker killed
        after it, pass or fail."""
        try:
            yield self
        except BaseException:
            print(self.logs())
            raise
        finally:
            for w in self.workers.values():
                w.kill()

    def __init__(self, bootstrap: str, tmp: Path, hooks: HttpReceiver) -> None:
        self.bootstrap, self.tmp = bootstrap, tmp
        self.layout = TopicLayout(f"vigil-kd-{uuid.uuid4().hex[:8]}", PARTITIONS)
        create_topics(bootstrap, self.layout)
        (tmp / "stations.yaml").write_text(
            yaml.safe_dump({"stations": [_station("HZ001", "qiantang"), _station("NB101", "yong")]})
        )
        (tmp / "rules.yaml").write_text(yaml.safe_dump(RULES, allow_unicode=True))
        routes = {
            "version": 1,
            "receivers": [_hook("duty", hooks.url + "/duty"), _hook("head", hooks.url + "/head")],
            "route": {
                "receivers": ["duty"],
                "group_by": ["basin"],
                "group_wait": "1s",
                "group_interval": "1s",
                "escalation": [{"after": ESCALATE_AFTER, "receivers": ["head"], "name": "head"}],
            },
        }
        (tmp / "routing.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
        self.workers: dict[str, WorkerProcess] = {}

    def start(self, name: str, port: int | None = None) -> WorkerProcess:
        """Worker ``name`` on web port ``port`` (a free one by default); if another
        process takes that port first, ``WorkerProcess.wait_ready`` moves it to another."""
        port = free_port() if port is None else port
        settings = {
            "app_id": self.layout.app_id,
            "data_dir": str(self.tmp / name / "data"),
            "partitions": PARTITIONS,
            "stations": str(self.tmp / "stations.yaml"),
            "rules": [str(self.tmp / "rules.yaml")],
            "alerts_jsonl": str(self.tmp / name / "alerts.jsonl"),
            "console": False,
            "lateness_ms": 0,
            "web_port": port,
            "dispatch": {
                "routes": str(self.tmp / "routing.yaml"),
                "link_secret_env": "VIGIL_TEST_LINK_SECRET",
                "retry_initial_s": 0.2,
                "retry_max_s": 1.0,
            },
        }
        config = self.tmp / f"{name}.yaml"
        config.write_text(yaml.safe_dump(settings, sort_keys=False))
        worker = WorkerProcess(self.tmp, name, config, self.bootstrap, port)
        self.workers[name] = worker
        return worker

    def produce(self, readings: list[tuple[str, str, int, float]]) -> None:
        async def go() -> None:
            producer = TelemetryProducer(self.bootstrap, self.layout)
            await producer.start()
            try:
                await producer.produce(readings)
            finally:
                await producer.stop()

        asyncio.run(go())

    def start_ready(self, *names: str) -> list[WorkerProcess]:
        """Workers ``names`` (free web ports), all started before any is waited for,
        once each is ready."""
        workers = [self.start(name) for name in names]
        for worker in workers:
            worker.wait_ready()
        return workers

    def red(self, station: str, at: int) -> None:
        """A red reading of ``station`` at ``at`` (ms), then the next report (``STEP``
        later), which closes its window: the red alert goes to the dispatch topic."""
        self.produce([(station, "water_level", at, 5.0)])
        self.produce([(station, "water_level", at + STEP, 5.0)])

    def logs(self) -> str:
        return "\n".join(f"--- {n}:\n{w.tail(3000)}" for n, w in self.workers.items())


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpReceiver]:
    monkeypatch.setenv("VIGIL_TEST_HOOK_SECRET", SECRET)
    monkeypatch.setenv("VIGIL_TEST_LINK_SECRET", "link-secret-for-tests")
    with HttpReceiver() as server:
        yield server


def _api(worker: WorkerProcess, path: str, *, own: bool = True) -> tuple[int, Any]:
    """GET ``path`` of ``worker``'s API: (status, JSON body). ``own``: only an answer of
    its own dispatcher counts (status 0 for one its owner gave through it)."""
    try:
        r = httpx.get(f"http://127.0.0.1:{worker.web_port}{path}", timeout=30)
    except httpx.HTTPError:
        return 0, None
    if own and SERVED_BY in r.headers:
        return 0, None
    return r.status_code, r.json() if r.headers.get("content-type", "").startswith(
        "application/json"
    ) else None


def _posts(hooks: HttpReceiver, path: str) -> list[dict[str, Any]]:
    """Every body POSTed to ``path`` (repeats included), each checked against its
    signature and its idempotency key."""
    out = []
    for r in list(hooks.requests):
        if r.path != path:
            continue
        expected = "sha256=" + hmac.new(SECRET.encode(), r.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(r.headers["x-vigil-signature"], expected)
        body = r.json()
        assert r.headers["idempotency-key"] == body["key"]
        out.append(body)
    return out


def _with_station(hooks: HttpReceiver, path: str, station: str) -> list[dict[str, Any]]:
    return [b for b in _posts(hooks, path) if any(a["station"] == station for a in b["alerts"])]


def _drained(worker: WorkerProcess) -> bool:
    """``worker`` owns the dispatcher, has sent everything and stored every delivery."""
    status, doc = _api(worker, "/api/outbox")
    return status == 200 and not any(doc["pending"].values()) and doc["unmarked"] == 0


def _took_over(worker: WorkerProcess) -> list[dict[str, Any]] | None:
    """The alerts of ``worker``'s dispatcher once it owns it, else None."""
    status, doc = _api(worker, "/api/alerts")
    return doc["alerts"] if status == 200 else None


def test_failover_keeps_the_outbox_and_the_acknowledgement(
    kafka_bootstrap: str, tmp_path: Path, hooks: HttpReceiver
) -> None:
    ws = Workers(kafka_bootstrap, tmp_path, hooks)
    try:
        w1, w2 = ws.start_ready("w1", "w2")

        # A red reading at HZ001; the next report closes its window: the alert goes to
        # the dispatch topic, and the owner tells the duty room once.
        ws.red("HZ001", T0)
        told = wait_for("HZ001's notification", lambda: _with_station(hooks, "/duty", "HZ001"))
        assert told[0]["level"] == "red" and told[0]["status"] == "firing"
        key = told[0]["key"]

        # Whichever owns the dispatcher now (a worker joining the group late may have
        # taken it over): once it has stored the delivery, SIGKILL.
        first = wait_for(
            "the owner to store the delivery",
            lambda: next((w for w in (w1, w2) if _drained(w)), None),
        )
        other = w2 if first is w1 else w1
        # One dispatcher, not two: the other worker's API passes requests on to it.
        listed = subprocess.run(
            [sys.executable, "-m", "engine.tools.cli", "alerts",
             "--url", f"http://127.0.0.1:{other.web_port}", "list"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert listed.returncode == 0 and "HZ001" in listed.stdout, listed
        served = httpx.get(f"http://127.0.0.1:{other.web_port}/api/alerts", timeout=30)
        assert served.headers[SERVED_BY].endswith(f":{first.web_port}")
        first.kill()

        alerts = wait_for("the other worker to take over", lambda: _took_over(other), timeout=120)
        (alert,) = [a for a in alerts if a["station"] == "HZ001"]
        assert alert["status"] == "firing" and alert["level"] == "red"

        # Acknowledged with the CLI, through the surviving worker's API.
        done = subprocess.run(
            [sys.executable, "-m", "engine.tools.cli", "alerts",
             "--url", f"http://127.0.0.1:{other.web_port}",
             "ack", alert["fingerprint"][:12], "--by", "duty officer", "--note", "on it"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        _, doc = _api(other, "/api/alerts")
        (acked,) = [a for a in doc["alerts"] if a["station"] == "HZ001"]
        assert acked["status"] == "acknowledged"
        assert acked["acknowledged"]["by"] == "duty officer"

        # Another basin goes red afterwards: it reaches the duty room through the new
        # owner. The duty room's deliveries are in order, so a repeat of HZ001's
        # notification by the new owner would have come before it.
        ws.red("NB101", T0 + 2 * STEP)
        wait_for("NB101's notification", lambda: _with_station(hooks, "/duty", "NB101"))
        assert [b["key"] for b in _posts(hooks, "/duty")].count(key) == 1, ws.logs()

        # The acknowledgement survives the next failover: a third worker joins (the
        # rebalance may hand it the dispatcher already), the owner is killed, and the
        # survivor restores HZ001 acknowledged.
        w3 = ws.start("w3")
        w3.wait_ready()
        owner = wait_for(
            "the owner to store its deliveries",
            lambda: next((w for w in (other, w3) if _drained(w)), None),
        )
        survivor = w3 if owner is other else other
        owner.kill()
        alerts = wait_for("the survivor to take over", lambda: _took_over(survivor), timeout=120)
        (restored,) = [a for a in alerts if a["station"] == "HZ001"]
        assert restored["status"] == "acknowledged", restored
        assert restored["acknowledged"]["note"] == "on it"

        # NB101, unacknowledged, escalates to the section head; HZ001, older and
        # acknowledged, would have escalated first: it does not.
        escalated = wait_for(
            "NB101's escalation",
            lambda: _with_station(hooks, "/head", "NB101"),
            timeout=240,
        )
        assert "escalation" in escalated[0]["note"]
        assert _with_station(hooks, "/head", "HZ001") == [], json.dumps(_posts(hooks, "/head"))
        # Each kill came after the deliveries were stored: nothing was sent twice.
        keys = [b["key"] for path in ("/duty", "/head") for b in _posts(hooks, path)]
        assert len(keys) == len(set(keys)), keys
        assert survivor.terminate() == 0, survivor.tail()
    finally:
        for w in ws.workers.values():
            w.kill()

"""The parts of the operator's view that need no running gateway: reason classes, the
last hour's counts, metrics labels, the dead-letter pages, terminal-safe bytes, and the
web settings' rule for binding off loopback."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connectors.ingest import PayloadError
from connectors.mqtt.payload import decode_payload
from connectors.mqtt.topics import TopicTemplate
from engine.contracts.alerts import AlertEvent
from engine.contracts.batch import TelemetryBatch
from engine.contracts.dead_letters import REASON_CLASSES, reason_class
from engine.runtime.config import ConfigError, load_settings
from engine.runtime.config_sections import WebSettings
from engine.runtime.metrics import Metrics, RecentCounts
from engine.runtime.services.dead_letters import MAX_PAYLOAD_BYTES, read_dead_letters
from engine.runtime.transport.log import Append, DurableLog
from engine.tools.observe_cli import show_bytes, show_text


def _reason(payload: bytes) -> str:
    with pytest.raises(PayloadError) as exc:
        decode_payload(payload, 0)
    return str(exc.value)


@pytest.mark.parametrize(
    ("payload", "cls"),
    [
        (b"not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"[" * 100_000, "not_json"),
        (b"[]", "bad_shape"),
        (b"[1]", "bad_shape"),
        (b"{}", "bad_shape"),
        (b'{"value": "high"}', "bad_value"),
        (b'{"value": 1e999}', "bad_value"),
        (b'{"value": 1, "ts": "yesterday"}', "bad_timestamp"),
        (b'{"value": 1, "ts": 1e300}', "bad_timestamp"),
        (b'{"value": 1, "ts": "2024-07-01T00:00:00"}', "bad_timestamp"),
    ],
)
def test_the_decoders_reasons_have_their_class(payload: bytes, cls: str) -> None:
    assert reason_class(_reason(payload)) == cls


def test_other_reasons_have_their_class_and_unknown_ones_are_other() -> None:
    with pytest.raises(PayloadError) as exc:
        TopicTemplate("vigil/{station}/{metric}").parse("other/x")
    assert reason_class(str(exc.value)) == "bad_topic"
    assert reason_class("unknown station 'NOPE1'") == "unknown_station"
    assert reason_class("late for rule flood.x: its 15-min window closed already") == "late"
    assert reason_class("out of order for rule flood.x: older than ...") == "out_of_order"
    assert reason_class("ingest error: KeyError: 'x'") == "ingest_error"
    assert reason_class("something new") == "other"
    assert set(REASON_CLASSES) >= {"not_json", "late", "other"}


def test_recent_counts_keep_one_hour_by_minute() -> None:
    now = [1_000_000.0]
    counts = RecentCounts(clock=lambda: now[0])
    counts.add("late")
    counts.add("late", 2)
    now[0] += 30 * 60
    counts.add("not_json")
    assert counts.totals() == {"late": 3, "not_json": 1}
    assert counts.totals(since_s=60) == {"not_json": 1}
    now[0] += 31 * 60  # the first minute is now more than an hour old
    assert counts.totals() == {"not_json": 1}


def _event(fp: str, level: str) -> AlertEvent:
    return AlertEvent(
        fingerprint=fp, rule_id="flood.river_level", station="HZ001", metric="water_level",
        level=level, previous_level="none", state="resolved" if level == "none" else "firing",
        started_at=0, at=0, value=1.0, threshold=1.0, summary="", labels={},
    )  # fmt: skip


def test_metrics_count_by_kind_reason_class_and_rule_without_a_station_label() -> None:
    m = Metrics()
    batches = [
        TelemetryBatch.from_rows([("HZ001", "w", 1, 1.0), ("R1", "r", 1, 1.0)]),
        TelemetryBatch.from_rows([("HZ001", "w", 2, 1.0), ("X", "w", 1, 1.0)]),
    ]
    m.count_readings("mqtt", batches, {"HZ001": "river_gauge", "R1": "rain_gauge"})
    m.count_dead_letter("value must be a number, got 'high'")
    m.count_dead_letter("value must be finite, got inf")
    m.count_alerts([_event("a", "orange"), _event("b", "red"), _event("a", "none")])
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(generate_latest(m.registry).decode())
        for s in f.samples
    }
    assert (
        samples[("vigil_readings_received_total", (("connector", "mqtt"), ("kind", "river_gauge")))]
        == 2
    )
    assert (
        samples[("vigil_readings_received_total", (("connector", "mqtt"), ("kind", "rain_gauge")))]
        == 1
    )
    assert (
        samples[("vigil_readings_received_total", (("connector", "mqtt"), ("kind", "unknown")))]
        == 1
    )
    assert samples[("vigil_dead_letters_total", (("reason", "bad_value"),))] == 2
    assert (
        samples[("vigil_alert_events_total", (("level", "orange"), ("rule", "flood.river_level")))]
        == 1
    )
    assert m.active_by_level() == {"red": 1}
    assert m.recent_dead_letters.totals() == {"bad_value": 2}
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert not [k for k in samples if any(name == "station" for name, _ in k[1])]


def test_dead_letter_pages_filter_continue_and_cut_large_payloads(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log")
    try:
        log.create_topic("dl", 1)
        reasons = ["payload is not JSON: x", "unknown station 'A'", "value must be a number"]
        log.append([
            Append("dl", 0, b"src", bytes([i]) * (MAX_PAYLOAD_BYTES + 1 if i == 4 else 3),
                   1000 + i, (("vigil-reason", reasons[i % 3].encode()),
                              ("vigil-source", b"vigil/A/level")))
            for i in range(6)
        ])  # fmt: skip
        first = read_dead_letters(log, "dl", limit=4)
        assert [r["offset"] for r in first["records"]] == [0, 1, 2, 3]
        assert (first["next"], first["end"]) == (4, 6)
        rest = read_dead_letters(log, "dl", start=first["next"])
        assert [r["offset"] for r in rest["records"]] == [4, 5]
        big = rest["records"][0]
        assert big["size"] == MAX_PAYLOAD_BYTES + 1 and big["truncated"] is True
        assert len(base64.b64decode(big["payload_b64"])) == MAX_PAYLOAD_BYTES
        by_class = read_dead_letters(log, "dl", reason="unknown_station")
        assert [(r["offset"], r["class"]) for r in by_class["records"]] == [
            (1, "unknown_station"), (4, "unknown_station")
        ]  # fmt: skip
        by_text = read_dead_letters(log, "dl", reason="A NUMBER", since_ms=1003)
        assert [r["offset"] for r in by_text["records"]] == [5]
        assert read_dead_letters(log, "missing") == {"records": [], "next": 0, "end": 0}
    finally:
        log.close()


def test_device_bytes_are_escaped_for_a_terminal() -> None:
    assert show_text("ok\x1b[2J\u202eevil\n\\") == "ok\\x1b[2J\\u202eevil\\n\\\\"
    assert show_bytes(b'{"value": "hi"}') == 'text "{\\"value\\": \\"hi\\"}"'
    assert show_bytes(b"\xff\x00\x1b") == "hex ff 00 1b"
    long = bytes(range(256))
    assert show_bytes(long) == "base64 " + base64.b64encode(long).decode()


def test_binding_off_loopback_needs_a_token_or_tls(tmp_path: Path) -> None:
    (tmp_path / "stations.yaml").write_text("stations: []\n")
    (tmp_path / "flood.yaml").write_text("version: 1\nrules: []\n")
    path = tmp_path / "vigil.yaml"
    path.write_text("stations: stations.yaml\nrules: [flood.yaml]\nweb: {bind: 0.0.0.0}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert str(exc.value) == (
        f"{path}:3:1: web: bind '0.0.0.0' is not loopback: set web.token_env (a "
        "bearer token from the environment) or web.tls, or bind 127.0.0.1"
    )
    assert WebSettings().bind == "127.0.0.1"
    assert WebSettings(bind="::1").token() is None
    assert WebSettings(bind="0.0.0.0", token_env="T").bind == "0.0.0.0"
    tls = {"cert_file": "c.pem", "key_file": "k.pem"}
    assert WebSettings(bind="10.0.0.5", tls=tls).tls is not None
    with pytest.raises(ValueError, match="is not loopback"):
        WebSettings(bind="gateway.example.org")


def test_the_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    web = WebSettings(token_env="VIGIL_UNIT_TOKEN")
    monkeypatch.delenv("VIGIL_UNIT_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="VIGIL_UNIT_TOKEN is not set or empty"):
        web.token()
    monkeypatch.setenv("VIGIL_UNIT_TOKEN", "abc")
    assert web.token() == "abc"


def test_a_worker_refuses_a_web_port_its_peers_could_not_reach(tmp_path: Path) -> None:
    """Faust took 0 for "unset" and bound 6066; the links and the other workers would
    have looked for the worker at port 0."""
    from engine.runtime.services.worker import KafkaWorker

    (tmp_path / "stations.yaml").write_text("stations: []\n")
    (tmp_path / "flood.yaml").write_text("version: 1\nrules: []\n")
    path = tmp_path / "vigil.yaml"
    path.write_text(f"stations: stations.yaml\nrules: [flood.yaml]\ndata_dir: {tmp_path}/d\n")
    for port in (0, 65536):
        with pytest.raises(ValueError) as exc:
            KafkaWorker(load_settings(path), "kafka://127.0.0.1:1", web_port=port)
        assert str(exc.value) == f"--web-port {port}: give a port from 1 to 65535"

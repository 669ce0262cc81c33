"""The launcher's brokers run the configuration Vigil ships (connectors/mqtt/)."""

from __future__ import annotations

from connectors.mqtt.mosquitto import CONFIG, Mosquitto
from engine.runtime.config_sections import BatchSettings


def _directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_shipped_file_holds_the_promise() -> None:
    lines = _directives(CONFIG.read_text())
    for line in (
        "max_queued_messages 0",
        "queue_qos0_messages true",
        "persistence true",
        "sys_interval 10",
        "listener 1883 127.0.0.1",
    ):
        assert line in lines


def test_the_broker_sends_a_batch_and_the_next_without_waiting_for_acknowledgements() -> None:
    # Below a batch, every QoS 1 batch of a backlog waited out the linger for messages
    # the broker held back until the batch was acknowledged.
    (inflight,) = [
        int(x.split()[1]) for x in _directives(CONFIG.read_text()) if x.startswith("max_inflight")
    ]
    assert inflight >= 2 * BatchSettings().max_readings


def test_launcher_uses_it_with_its_own_port_folder_log_and_overrides() -> None:
    broker = Mosquitto(port=12345, override={"max_queued_messages": "1000"})
    try:
        lines = _directives(broker.config())
        replaced = {"listener", "persistence_location", "log_dest", "max_queued_messages"}
        shipped = [x for x in _directives(CONFIG.read_text()) if x.split()[0] not in replaced]
        assert [x for x in lines if x.split()[0] not in replaced] == shipped
        assert "listener 12345 127.0.0.1" in lines
        assert f"log_dest file {broker.log_path}" in lines
        assert [x for x in lines if x.startswith("max_queued_messages")] == [
            "max_queued_messages 1000"
        ]
    finally:
        broker.stop()

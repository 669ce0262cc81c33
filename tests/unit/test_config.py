from __future__ import annotations

from pathlib import Path

import pytest

from engine.runtime.config import ConfigError, load_settings


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "stations.yaml").write_text("stations: []\n")
    (tmp_path / "flood.yaml").write_text("version: 1\nrules: []\n")
    path = tmp_path / "vigil.yaml"
    path.write_text(text)
    return path


def test_valid_settings_resolve_paths_against_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "stations: stations.yaml\nrules: [flood.yaml]\ndata_dir: var\n")
    s = load_settings(path)
    assert s.data_dir == tmp_path / "var"
    assert s.rules == (tmp_path / "flood.yaml",)
    assert s.alerts_path == tmp_path / "var" / "alerts.jsonl"
    assert s.mqtt.topic_template == "vigil/{station}/{metric}"


def test_every_problem_is_listed_with_its_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "stations: stations.yaml\nrules: [flood.yaml]\nmqtt: {port: 70000, hots: x}\n"
        "partitions: 0\n",
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert str(exc.value).splitlines() == [
        f"{path}:4:1: partitions: Input should be greater than or equal to 1",
        f"{path}:3:8: mqtt.port: Input should be less than or equal to 65535",
        f"{path}:3:21: mqtt.hots: unknown field (did you mean 'host'?)",
    ]


def test_missing_files_and_bad_template(tmp_path: Path) -> None:
    path = _write(tmp_path, "stations: nope.yaml\nrules: [flood.yaml]\n")
    with pytest.raises(ConfigError, match=r"file not found: .*nope\.yaml"):
        load_settings(path)
    path = _write(
        tmp_path, "stations: stations.yaml\nrules: [flood.yaml]\nmqtt: {topic_template: a/b}\n"
    )
    with pytest.raises(
        ConfigError, match=r"vigil.yaml:3:1: mqtt: topic template 'a/b' must contain"
    ):
        load_settings(path)


def test_password_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(
        tmp_path,
        "stations: stations.yaml\nrules: [flood.yaml]\nmqtt: {username: gw, password_env: GW_PW}\n",
    )
    s = load_settings(path)
    with pytest.raises(ConfigError, match="environment variable GW_PW is not set"):
        s.mqtt.options(10, 10)
    monkeypatch.setenv("GW_PW", "s3cret")
    assert s.mqtt.options(10, 10).password == "s3cret"
    assert "s3cret" not in repr(s)


def test_nested_unknown_fields_suggest_the_nearest(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "stations: stations.yaml\nrules: [flood.yaml]\nlatness_ms: 5\n"
        "mqtt:\n  tls: {ca_fil: ca.pem}\n",
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ={})
    assert str(exc.value).splitlines() == [
        f"{path}:5:3: mqtt.tls.ca_file: required field is missing",
        f"{path}:5:9: mqtt.tls.ca_fil: unknown field (did you mean 'ca_file'?)",
        f"{path}:3:1: latness_ms: unknown field (did you mean 'lateness_ms'?)",
    ]


def test_every_setting_can_come_from_the_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, "stations: stations.yaml\nrules: [flood.yaml]\nmqtt: {host: a}\n")
    s = load_settings(
        path,
        environ={
            "VIGIL_MQTT__HOST": "broker.lan",
            "VIGIL_MQTT__PORT": "8883",
            "vigil_batch__linger_ms": "20",
            "VIGIL_CONSOLE": "false",
            "VIGIL_DATA_DIR": "/var/lib/vigil",
            "VIGIL_RULES": "[flood.yaml, flood.yaml]",
            # Not settings: left alone (the conventional home of the MQTT password).
            "VIGIL_MQTT_PASSWORD": "s3cret",
            "VIGIL_DIFF_EXAMPLES": "5",
        },
    )
    assert (s.mqtt.host, s.mqtt.port, s.batch.linger_ms, s.console) == (
        "broker.lan",
        8883,
        20,
        False,
    )
    assert s.data_dir == Path("/var/lib/vigil")
    assert s.rules == (tmp_path / "flood.yaml", tmp_path / "flood.yaml")


def test_environment_errors_name_the_variable(tmp_path: Path) -> None:
    path = _write(tmp_path, "stations: stations.yaml\nrules: [flood.yaml]\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ={"VIGIL_MQTT__HOTS": "x", "VIGIL_MQTT__PORT": "0"})
    assert str(exc.value).splitlines() == [
        "$VIGIL_MQTT__PORT: mqtt.port: Input should be greater than or equal to 1",
        "$VIGIL_MQTT__HOTS: mqtt.hots: unknown field (did you mean 'host'?)",
    ]


def test_an_alias_bomb_in_the_settings_fails_fast(tmp_path: Path) -> None:
    path = _write(tmp_path, "stations: stations.yaml\nrules: [flood.yaml]\n" + BOMB)
    with pytest.raises(ConfigError, match=r"vigil.yaml:\d+:1: YAML aliases expand to more"):
        load_settings(path, environ={})


#: A "billion laughs" of ~700 bytes: 9 levels of 9 aliases, 9**9 strings once expanded.
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_mqtt_ingest_processes_and_protocol_reach_the_client_options(tmp_path: Path) -> None:
    base = "stations: stations.yaml\nrules: [flood.yaml]\n"
    s = load_settings(_write(tmp_path, base), environ={})
    assert (s.mqtt.options(10, 10).processes, s.mqtt.options(10, 10).mqtt5) == (1, False)
    s = load_settings(_write(tmp_path, base + "mqtt: {processes: 4, mqtt5: true}\n"), environ={})
    assert (s.mqtt.options(10, 10).processes, s.mqtt.options(10, 10).mqtt5) == (4, True)
    path = _write(tmp_path, base + "mqtt: {processes: 0}\n")
    with pytest.raises(ConfigError, match=r"3:8: mqtt.processes: Input should be greater"):
        load_settings(path, environ={})

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
        f"{path}: partitions: Input should be greater than or equal to 1",
        f"{path}: mqtt.port: Input should be less than or equal to 65535",
        f"{path}: mqtt.hots: Extra inputs are not permitted",
    ]


def test_missing_files_and_bad_template(tmp_path: Path) -> None:
    path = _write(tmp_path, "stations: nope.yaml\nrules: [flood.yaml]\n")
    with pytest.raises(ConfigError, match=r"file not found: .*nope\.yaml"):
        load_settings(path)
    path = _write(
        tmp_path, "stations: stations.yaml\nrules: [flood.yaml]\nmqtt: {topic_template: a/b}\n"
    )
    with pytest.raises(ConfigError, match=r"mqtt: Value error, topic template 'a/b' must contain"):
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

"""Station identities on the field servers (``sl651:``, ``hj212:`` in the registry):
validated by ``rules check`` with ``file:line:col`` problems, mapped by the gateway."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.fieldsession import Identity
from engine.runtime.config import ConfigError
from engine.runtime.services.field import identities
from rules import RulesInvalid, load_registry
from rules.cli import check_main

GOOD = """\
stations:
  - id: SK01
    kind: reservoir
    sl651: {address: "0012345678", password: "12ab"}
  - id: AQ01
    kind: air_quality
    hj212: {mn: AQ0000000001, password: "123456"}
  - id: AQ02
    kind: air_quality
    hj212: {mn: AQ0000000002, password_env: VIGIL_TEST_AQ02_PW}
"""

BAD = """\
stations:
  - id: SK01
    kind: reservoir
    sl651: {address: "12345678", password: "1234"}
  - id: SK02
    kind: reservoir
    sl651: {address: "0012345678", password: "1234"}
  - id: SK03
    kind: reservoir
    sl651: {address: "0012345678", password: "1234"}
  - id: AQ01
    kind: air_quality
    hj212: {mn: AQ1, password: "1", password_env: PW}
"""


def test_identities_map_protocol_ids_to_stations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stations.yaml"
    path.write_text(GOOD)
    registry = load_registry(path)
    monkeypatch.delenv("VIGIL_TEST_AQ02_PW", raising=False)
    with pytest.raises(ConfigError) as info:
        identities(registry)
    assert str(info.value) == (
        f"{path}: station AQ02: hj212.password_env: "
        "environment variable VIGIL_TEST_AQ02_PW is not set"
    )
    monkeypatch.setenv("VIGIL_TEST_AQ02_PW", "s3cret")
    sl651, hj212 = identities(registry)
    assert sl651 == {"0012345678": Identity("SK01", "12AB")}
    assert hj212 == {
        "AQ0000000001": Identity("AQ01", "123456"),
        "AQ0000000002": Identity("AQ02", "s3cret"),
    }


def test_rules_check_reports_bad_and_duplicate_identities(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "stations.yaml"
    path.write_text(BAD)
    with pytest.raises(RulesInvalid) as info:
        load_registry(path)
    assert info.value.lines == [
        f"{path}:4:13: stations[0].sl651.address: "
        "expected the station address as 10 hex digits, got '12345678'",
        f"{path}:10:13: stations[2].sl651.address: "
        "SL 651 address '0012345678' already belongs to station 'SK02'",
        f"{path}:13:5: stations[3].hj212: give exactly one of password and password_env",
    ]
    assert check_main([str(path)], None) == 1
    assert "already belongs to station 'SK02'" in capsys.readouterr().out


def test_a_reload_swaps_identities_and_keeps_them_on_an_unset_password_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.runtime.config import Settings
    from engine.runtime.services.field import FieldServers

    path = tmp_path / "stations.yaml"
    path.write_text(GOOD)
    monkeypatch.setenv("VIGIL_TEST_AQ02_PW", "s3cret")
    settings = Settings(stations=path, rules=(path,), sl651={"port": 0})  # type: ignore[arg-type]

    async def nothing(*args: object) -> None:
        return None

    servers = FieldServers(settings, load_registry(path), nothing, nothing)
    assert [s.name for s in servers.servers] == ["sl651"]
    path.write_text(GOOD.replace('"0012345678"', '"0012345679"'))
    servers.update(load_registry(path))
    assert set(servers.sl651_ids) == {"0012345679"}
    monkeypatch.delenv("VIGIL_TEST_AQ02_PW")
    path.write_text(GOOD)
    servers.update(load_registry(path))  # refused: AQ02's password cannot be read
    assert set(servers.sl651_ids) == {"0012345679"}

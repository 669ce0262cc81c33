"""The gateway's NB-IoT devices from the registry store: which lookup the settings give
(``services.nbiot.open_devices``), and ``DeviceRegistry.follow`` woken at once (SIGHUP)
and closed while a catch-up may be in flight."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest

from connectors.nbiot.devices import YamlDevices
from engine.contracts.devices import Device
from engine.runtime.config import ConfigError, load_settings
from engine.runtime.services.nbiot import open_devices
from rules.store import DeviceRegistry, StoreMissing, import_devices, make_imei

PACKS = Path("rules/packs").resolve()
STATIONS = {"HZ001", "HZ002", "HZ003"}


def settings_file(tmp_path: Path, nbiot: str) -> Path:
    path = tmp_path / "vigil.yaml"
    path.write_text(
        f"data_dir: {tmp_path / 'data'}\nstations: {PACKS / 'demo_stations.yaml'}\n"
        f"rules: [{PACKS / 'flood.yaml'}]\nnbiot:\n{nbiot}"
    )
    return path


def devices_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["identity", "station", "product"])
        out.writerows((i, s, "waterlog-v1") for i, s in rows)
    return path


def test_without_a_device_file_the_store_in_the_data_dir_is_created_and_used(
    tmp_path: Path,
) -> None:
    settings = load_settings(settings_file(tmp_path, "  registry_cache: 10\n"))
    lookup, registry = open_devices(settings)
    try:
        assert lookup is registry and isinstance(registry, DeviceRegistry)
        assert registry.path == (tmp_path / "data" / "registry").resolve()
        assert registry.cache_size == 10
        assert len(registry) == 0
    finally:
        assert registry is not None
        registry.close()


def test_a_device_file_stays_a_yaml_lookup_and_a_folder_must_hold_a_store(
    tmp_path: Path,
) -> None:
    yaml_file = tmp_path / "devices.yaml"
    yaml_file.write_text("devices: [{identity: '1', station: HZ001, product: waterlog-v1}]\n")
    lookup, registry = open_devices(
        load_settings(settings_file(tmp_path, f"  devices: {yaml_file}\n"))
    )
    assert isinstance(lookup, YamlDevices) and registry is None
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StoreMissing, match="no registry store at"):
        open_devices(load_settings(settings_file(tmp_path, f"  devices: {empty}\n")))
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(settings_file(tmp_path, f"  devices: {tmp_path / 'nope.yaml'}\n"))


def test_follow_catches_up_at_once_when_woken_and_close_waits_for_it(tmp_path: Path) -> None:
    store = tmp_path / "r"
    a, b = make_imei(86123456, 1), make_imei(86123456, 2)
    import_devices(store, devices_csv(tmp_path / "1.csv", [(a, "HZ001")]), STATIONS)
    registry = DeviceRegistry(store)

    async def scenario() -> None:
        wake = asyncio.Event()
        follow = asyncio.create_task(registry.follow(3600, wake))
        assert registry.lookup(b) is None  # cached as unknown
        import_devices(store, devices_csv(tmp_path / "2.csv", [(b, "HZ002")]), STATIONS)
        await asyncio.sleep(0.2)
        assert registry.lookup(b) is None  # the interval is an hour: not caught up
        wake.set()
        async with asyncio.timeout(30):
            while registry.lookup(b) is None:
                await asyncio.sleep(0.01)
        assert registry.lookup(b) == Device(b, "HZ002", "waterlog-v1")
        wake.set()
        await asyncio.sleep(0)  # a catch-up may now be running in its thread
        follow.cancel()
        await asyncio.to_thread(registry.close)  # waits for it; never reads a closed store
        with pytest.raises(asyncio.CancelledError):
            await follow
        assert registry.catch_up() is False  # closed: nothing is read any more

    asyncio.run(scenario())

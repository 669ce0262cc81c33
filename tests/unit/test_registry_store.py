"""The registry store (rules/store): import, upsert, remove, file:line errors, lookups,
the bounded cache, and stations read back by load_registry."""

from __future__ import annotations

import csv
import tracemalloc
from pathlib import Path

import pytest

from engine.contracts.devices import Device
from rules.api import load_ruleset
from rules.registry import load_registry
from rules.store import (
    DeviceRegistry,
    identity_problem,
    import_devices,
    make_imei,
    put_stations,
    read_device,
    remove_devices,
    store_stats,
)
from rules.store import importer as importer_module

DEMO = Path("rules/packs/demo_stations.yaml")
FLOOD = Path("rules/packs/flood.yaml")
STATIONS = {"HZ001", "HZ002", "HZ003"}
KEY = "00112233445566778899aabbccddeeff"
HEADER = ["identity", "id_type", "station", "product", "key", "metrics", "deleted"]


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerows(rows)
    return path


def test_imei_check_digit() -> None:
    assert identity_problem("imei", "490154203237518") is None  # the textbook IMEI
    assert identity_problem("imei", "490154203237519") == (
        "malformed IMEI '490154203237519': check digit 9, expected 8"
    )
    assert identity_problem("imei", "49015420323751") == (
        "malformed IMEI '49015420323751': expected 15 digits"
    )
    assert identity_problem("imsi", "460001234567890") is None
    assert identity_problem("device_id", "a b") is not None
    assert all(identity_problem("imei", make_imei(86123456, n)) is None for n in range(1000))


def test_import_upsert_remove_round_trip(tmp_path: Path) -> None:
    store = tmp_path / "registry"
    a, b, c = (make_imei(86123456, n) for n in range(3))
    first = write_csv(tmp_path / "d1.csv", [
        [a, "imei", "HZ001", "waterlog-v1", KEY, "water_depth:water_level;battery_v:battery", ""],
        [b, "", "HZ002", "manhole-v1", "", "", "0"],
        ["ctw-0001", "device_id", "HZ003", "manhole-v1", "", "", ""],
    ])  # fmt: skip
    report = import_devices(store, first, STATIONS)
    assert (report.rows, report.added, report.rejected, report.devices) == (3, 3, 0, 3)
    with DeviceRegistry(store) as reg:
        assert reg.lookup(a) == Device(
            a, "HZ001", "waterlog-v1", bytes.fromhex(KEY),
            {"water_depth": "water_level", "battery_v": "battery"},
        )  # fmt: skip
        assert reg.lookup(b) == Device(b, "HZ002", "manhole-v1")
        assert reg.lookup("ctw-0001") == Device("ctw-0001", "HZ003", "manhole-v1")
        assert reg.lookup(c) is None
        assert len(reg) == 3

    second = write_csv(tmp_path / "d2.csv", [
        [a, "", "HZ003", "waterlog-v1", "", "", ""],  # moved, key dropped
        [b, "", "", "", "", "", "yes"],  # removed
        [c, "", "HZ001", "waterlog-v1", "", "", ""],  # new
        [make_imei(86123456, 9), "", "", "", "", "", "1"],  # removal of an unknown device
    ])  # fmt: skip
    report = import_devices(store, second, STATIONS)
    assert (report.added, report.updated, report.removed, report.not_registered) == (1, 1, 1, 1)
    assert report.devices == 3
    with DeviceRegistry(store) as reg:
        assert reg.lookup(a) == Device(a, "HZ003", "waterlog-v1")
        assert reg.lookup(b) is None
        assert reg.lookup(c) == Device(c, "HZ001", "waterlog-v1")
    assert read_device(store, c) == (Device(c, "HZ001", "waterlog-v1"), 2, 4)

    assert remove_devices(store, [a, a, b]) == (1, [b])
    assert store_stats(store)["devices"] == 2
    with DeviceRegistry(store) as reg:
        assert reg.lookup(a) is None


def test_problems_are_file_line_col(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bad.csv", [
        ["490154203237518", "imei", "HZ001", "waterlog-v1", "", "", ""],
        ["490154203237519", "", "HZ001", "waterlog-v1", "", "", ""],
        ["490154203237518", "imei", "HZ002", "waterlog-v1", "", "", ""],
        ["abc-1", "device_id", "HZ0O1", "manhole-v2", "zz", "x", ""],
        ["460001234567890", "imsi", "HZ002", "manhole-v1", "0011", "", "maybe"],
        ["460001234567891", "imsy", "", "", "", "", ""],
    ])  # fmt: skip
    report = import_devices(tmp_path / "r", path, STATIONS, products={"waterlog-v1", "manhole-v1"})
    f = str(path)
    assert report.problems == [
        f"{f}:3:1: identity: malformed IMEI '490154203237519': check digit 9, expected 8",
        f"{f}:4:1: identity: duplicate identity '490154203237518' (first at line 2)",
        f"{f}:5:3: station: unknown station 'HZ0O1' (did you mean 'HZ001'?)",
        f"{f}:5:4: product: unknown product 'manhole-v2' (did you mean 'manhole-v1'?)",
        f"{f}:5:5: key: expected hex digits",
        f"{f}:5:6: metrics: expected field:metric pairs separated by ';', got 'x'",
        f"{f}:6:5: key: expected at least 16 bytes (32 hex digits), got 2",
        f"{f}:6:7: deleted: expected 1, true, yes (remove) or 0, false, no; got 'maybe'",
        f"{f}:7:2: id_type: unknown id_type 'imsy' (did you mean 'imsi'?)",
        f"{f}:7:3: station: required",
        f"{f}:7:4: product: required",
    ]
    assert (report.added, report.rejected) == (1, 5)


def test_unknown_column_and_missing_identity(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "h.csv", [], header=["imei", "staton"])
    with pytest.raises(ValueError) as exc:
        import_devices(tmp_path / "r", path, STATIONS)
    assert str(exc.value).splitlines() == [
        f"{path}:1:1: unknown column 'imei'",
        f"{path}:1:2: unknown column 'staton' (did you mean 'station'?)",
        f"{path}:1:1: the header has no 'identity' column",
    ]


def test_duplicates_found_across_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file's earlier rows are in the store, not in memory: a duplicate many batches
    later is still found, with the line of its first row, removals included."""
    monkeypatch.setattr(importer_module, "BATCH_ROWS", 3)
    ids = [make_imei(86000000, n) for n in range(20)]
    rows = [[i, "", "HZ001", "p", "", "", ""] for i in ids]
    rows.append([ids[0], "", "HZ002", "p", "", "", ""])  # line 22, a duplicate of line 2
    rows.append([ids[5], "", "", "", "", "", "1"])  # line 23, removes line 7's device
    rows += [[make_imei(86000001, n), "", "HZ001", "p", "", "", ""] for n in range(7)]
    rows.append([ids[5], "", "HZ003", "p", "", "", ""])  # line 31, after its removal
    path = write_csv(tmp_path / "d.csv", rows)
    report = import_devices(tmp_path / "r", path, STATIONS)
    assert report.problems == [
        f"{path}:22:1: identity: duplicate identity '{ids[0]}' (first at line 2)",
        f"{path}:23:1: identity: duplicate identity '{ids[5]}' (first at line 7)",
        f"{path}:31:1: identity: duplicate identity '{ids[5]}' (first at line 7)",
    ]
    with DeviceRegistry(tmp_path / "r") as reg:
        assert reg.lookup(ids[0]) == Device(ids[0], "HZ001", "p")
        assert reg.lookup(ids[5]) == Device(ids[5], "HZ001", "p")
        assert len(reg) == 27
    # The same file again is an update of every row, not a duplicate of the last import.
    again = import_devices(tmp_path / "r", path, STATIONS)
    assert (again.updated, again.added, again.rejected) == (27, 0, 3)


def test_cache_stays_bounded_while_devices_churn(tmp_path: Path) -> None:
    n, cache = 20_000, 500
    rows = [[make_imei(86555555, i), "", "HZ001", "waterlog-v1", KEY, "a:b", ""] for i in range(n)]
    import_devices(tmp_path / "r", write_csv(tmp_path / "d.csv", rows), STATIONS)
    ids = [r[0] for r in rows]
    with DeviceRegistry(tmp_path / "r", cache_size=cache) as reg:
        tracemalloc.start()  # before the cache fills, so that evictions count as freed
        try:
            for i in ids[:2000]:
                assert reg.lookup(i) is not None
            assert reg.cached == cache
            full = tracemalloc.get_traced_memory()[0]
            for i in ids[2000:]:  # 18,000 more distinct devices, and as many unknown ones
                assert reg.lookup(i) is not None
                assert reg.lookup("x" + i) is None
            grown = tracemalloc.get_traced_memory()[0] - full
        finally:
            tracemalloc.stop()
        assert reg.cached == cache
        # An unbounded cache would hold 36,000 more entries (several MB); a bounded one
        # replaces entries with entries of the same size.
        assert grown < 16 * 1024, grown


def test_refresh_sees_an_import_and_forgets_the_cache(tmp_path: Path) -> None:
    store = tmp_path / "r"
    a = make_imei(86123456, 1)
    import_devices(store, write_csv(tmp_path / "1.csv", [[a, "", "HZ001", "p", "", "", ""]]),
                   STATIONS)  # fmt: skip
    with DeviceRegistry(store) as reg:
        assert reg.lookup(a) == Device(a, "HZ001", "p")
        b = make_imei(86123456, 2)
        assert reg.lookup(b) is None  # cached as unknown
        assert reg.refresh() is False
        rows = [[a, "", "HZ002", "p", "", "", ""], [b, "", "HZ003", "q", "", "", ""]]
        import_devices(store, write_csv(tmp_path / "2.csv", rows), STATIONS)
        assert reg.lookup(a) == Device(a, "HZ001", "p")  # not refreshed yet
        assert reg.refresh() is True
        assert reg.lookup(a) == Device(a, "HZ002", "p")
        assert reg.lookup(b) == Device(b, "HZ003", "q")


def test_stations_from_the_store_select_and_compile_like_the_file(tmp_path: Path) -> None:
    store = tmp_path / "r"
    yaml_registry = load_registry(DEMO)
    assert put_stations(store, (s.document() for s in yaml_registry)) == (3, 0)
    assert put_stations(store, (s.document() for s in yaml_registry)) == (0, 3)
    from_store = load_registry(store)
    assert list(from_store) == sorted(yaml_registry, key=lambda s: s.id)
    by_file = load_ruleset([FLOOD], yaml_registry, "en").ruleset
    by_store = load_ruleset([FLOOD], from_store, "en").ruleset
    assert [r.stations for r in by_store.rules] == [r.stations for r in by_file.rules]
    assert by_store.version == by_file.version  # same stations, same values, same order


def test_a_metric_the_station_does_not_report_is_refused(tmp_path: Path) -> None:
    """With the stations' metrics known, a ``metrics`` column naming one the station
    does not report refuses the row (the gateway would dead-letter those readings)."""
    ok, typo, other = (make_imei(86123457, n) for n in range(3))
    path = write_csv(tmp_path / "m.csv", [
        [ok, "", "HZ001", "waterlog-v1", "", "water_depth:water_level", ""],
        [typo, "", "HZ001", "waterlog-v1", "", "water_depth:water_levle;battery_v:batt", ""],
        [other, "", "HZ002", "waterlog-v1", "", "", ""],  # the product's names: not checked
    ])  # fmt: skip
    reports = {"HZ001": {"water_level", "rainfall"}, "HZ002": {"water_level"}}
    report = import_devices(tmp_path / "r", path, reports)
    assert report.problems == [
        f"{path}:3:6: metrics: station HZ001 does not report 'water_levle' (did you mean "
        "'water_level'?) (it reports rainfall, water_level)",
        f"{path}:3:6: metrics: station HZ001 does not report 'batt' (it reports rainfall, "
        "water_level)",
    ]
    assert (report.added, report.rejected) == (2, 1)
    with DeviceRegistry(tmp_path / "r") as reg:
        assert reg.lookup(typo) is None and reg.lookup(ok) is not None


def test_the_cli_checks_metrics_against_the_store_and_the_station_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.tools.cli import main

    data = tmp_path / "data"
    a, b, c = (make_imei(86123458, n) for n in range(3))
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "stations:\n  - {id: WL09, kind: waterlogging, name: Underpass 9, lat: 30.2, lon: 120.1,"
        " metrics: {road_water_depth: m}}\n"
    )
    assert main(["registry", "import", str(extra), "--data-dir", str(data)]) == 0
    path = write_csv(tmp_path / "d.csv", [
        [a, "", "WL09", "waterlog-v1", "", "water_depth:road_water_depth", ""],
        [b, "", "WL09", "waterlog-v1", "", "water_depth:water_level", ""],  # from the store
        [c, "", "HZ002", "waterlog-v1", "", "water_depth:road_water_depth", ""],  # the file
    ])  # fmt: skip
    capsys.readouterr()
    code = main(["registry", "import", str(path), "--data-dir", str(data), "--stations", str(DEMO)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{path}:3:6: metrics: station WL09 does not report 'water_level'" in err
    assert f"{path}:4:6: metrics: station HZ002 does not report 'road_water_depth'" in err
    with DeviceRegistry(data / "registry") as reg:
        assert reg.lookup(a) is not None
        assert reg.lookup(b) is None and reg.lookup(c) is None

"""``vigil registry``: the device and station registry store (``rules.store``).

- ``import FILE``: a devices CSV (a header with ``identity``) or a station registry
  (YAML, or CSV with ``id,kind``), told apart by content; devices are checked against
  the stations of the store and of ``--stations``/``--config`` (the station, and the
  metrics the ``metrics`` column names), and ``--products``. A row that fails a check
  is refused with its ``file:line:col``, the others are applied: exit 1 when any row
  was refused, 2 when nothing could be.
- ``remove IDENTITY...`` (``--station`` for station ids), ``show IDENTITY``, ``stats``.

The store is ``DATA_DIR/registry``: ``--data-dir``, else the settings' ``data_dir``
(``--config``), else ``var/vigil``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    reg = sub.add_parser("registry", help="the device and station registry store")
    reg_sub = reg.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", type=Path, help="the gateway's data directory")
        p.add_argument("--config", help="settings file (its data_dir and stations)")

    imp = reg_sub.add_parser(
        "import", help="upsert devices (CSV) or stations (YAML/CSV registry) into the store"
    )
    imp.add_argument("file", type=Path, help="devices.csv, or a station registry")
    common(imp)
    imp.add_argument("--stations", help="station registry (YAML/CSV) devices may name")
    imp.add_argument(
        "--products", action="append", default=[],
        help="product profiles (YAML with 'products: [{name: ...}]'); repeatable; "
        "without it any product name is taken",
    )  # fmt: skip
    imp.add_argument("--max-problems", type=int, default=100, help="problems printed (100)")
    imp.set_defaults(func=_import)

    rm = reg_sub.add_parser("remove", help="remove devices (or, with --station, stations)")
    rm.add_argument("ids", nargs="+", help="device identities (station ids with --station)")
    rm.add_argument("--station", action="store_true", help="the ids are station ids")
    common(rm)
    rm.set_defaults(func=_remove)

    show = reg_sub.add_parser("show", help="one device (or station) by identity")
    show.add_argument("identity")
    common(show)
    show.set_defaults(func=_show)

    stats = reg_sub.add_parser("stats", help="devices, stations, last import, disk per device")
    common(stats)
    stats.set_defaults(func=_stats)


def run(args: argparse.Namespace) -> int:
    from rules.errors import RulesInvalid
    from rules.store import StoreBusy, StoreMissing

    try:
        return int(args.func(args))
    except (StoreBusy, StoreMissing, RulesInvalid, OSError, ValueError) as exc:
        lines = exc.lines if isinstance(exc, RulesInvalid) else [str(exc)]
        print("\n".join(lines), file=sys.stderr)
        return 2


def _settings_stations(args: argparse.Namespace) -> tuple[Path, str | None]:
    """The store's folder and the settings' station registry (if --config)."""
    if args.config:
        from engine.runtime.config import load_settings

        settings = load_settings(args.config)
        data_dir = args.data_dir or settings.data_dir
        return data_dir / "registry", str(settings.stations)
    return (args.data_dir or Path("var/vigil")) / "registry", None


def _is_devices_csv(path: Path) -> bool:
    if path.suffix.lower() != ".csv":
        return False
    with path.open(encoding="utf-8-sig") as fh:
        header = fh.readline()
    return "identity" in (h.strip() for h in header.split(","))


def _import(args: argparse.Namespace) -> int:
    from rules.registry import load_registry

    store, configured = _settings_stations(args)
    if not _is_devices_csv(args.file):
        from rules.store import put_stations

        registry = load_registry(args.file)
        added, updated = put_stations(store, (s.document() for s in registry))
        print(f"{len(registry):,} stations: {added:,} added, {updated:,} updated ({store})")
        return 0
    from rules.store import import_devices, station_metrics

    stations = station_metrics(store)
    for extra in filter(None, (args.stations, configured)):
        if Path(extra).resolve() != store.resolve():
            stations.update((s.id, frozenset(s.metrics)) for s in load_registry(extra))
    if not stations:
        raise ValueError(
            f"no stations to check devices against: import a station registry into {store} "
            "first, or give --stations"
        )
    products = _product_names(args.products) if args.products else None
    report = import_devices(store, args.file, stations, products, _progress(),
                            max_problems=args.max_problems)  # fmt: skip
    for line in report.problems:
        print(line, file=sys.stderr)
    if report.rejected > len(report.problems):
        print(f"... {report.rejected - len(report.problems):,} more rows rejected",
              file=sys.stderr)  # fmt: skip
    print(f"import #{report.number} of {args.file}: {report.summary()}")
    return 1 if report.rejected else 0


def _product_names(paths: list[str]) -> set[str]:
    import yaml

    names: set[str] = set()
    for path in paths:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        items = data.get("products") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a mapping with a 'products' list")
        names.update(str(p["name"]) for p in items if isinstance(p, dict) and "name" in p)
    return names


def _progress() -> Any:
    from engine.tools.replay_input import Progress

    shown = Progress(sys.stderr)

    def update(read: int, rows: int) -> None:
        shown.update(read, rows)

    shown.start("importing", None, "rows")
    return update


def _remove(args: argparse.Namespace) -> int:
    from rules.store import remove_devices, remove_stations

    store, _ = _settings_stations(args)
    if args.station:
        removed, missing = remove_stations(store, args.ids)
        what = "stations"
    else:
        removed, missing = remove_devices(store, args.ids)
        what = "devices"
    for m in missing:
        print(f"not registered: {m}", file=sys.stderr)
    print(f"{removed} {what} removed")
    return 1 if missing else 0


def _show(args: argparse.Namespace) -> int:
    import json

    from rules.store import read_device, station_documents

    store, _ = _settings_stations(args)
    found = read_device(store, args.identity)
    if found is not None:
        device, number, line = found
        key = f"set ({len(device.key)} bytes, not shown)" if device.key else "none"
        metrics = ";".join(f"{k}:{v}" for k, v in device.metrics.items()) or "(product's names)"
        print(f"device   {device.identity}\nstation  {device.station}\n"
              f"product  {device.product}\nkey      {key}\nmetrics  {metrics}\n"
              f"imported by import #{number}, line {line}")  # fmt: skip
        return 0
    for doc in station_documents(store):
        if doc["id"] == args.identity:
            print(json.dumps(doc, ensure_ascii=False, indent=2))
            return 0
    print(f"not registered: {args.identity}", file=sys.stderr)
    return 1


def _stats(args: argparse.Namespace) -> int:
    from rules.store import store_stats

    store, _ = _settings_stations(args)
    s = store_stats(store)
    per = f"{s['bytes_per_device']:.1f} B a device" if s["bytes_per_device"] else "no devices"
    print(f"store     {store}\ndevices   {s['devices']:,}\nstations  {s['stations']:,}\n"
          f"disk      {s['disk_bytes']:,} B ({per})\nimports   {s['imports']}")  # fmt: skip
    last = s["last_import"]
    if last:
        at = datetime.fromtimestamp(last["at"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        print(f"last      #{last['number']} {last['file']} at {at}: {last['rows']:,} rows, "
              f"{last['added']:,} added, {last['updated']:,} updated, "
              f"{last['removed']:,} removed, {last['rejected']:,} rejected")  # fmt: skip
    return 0

"""The device registry at scale: import rate, lookup rate, disk and memory per device.

    .venv/bin/python bench/bench_registry.py --devices 10000000 --json bench/results/registry.json

What it does, in one run and one folder (``--dir``, default a temporary one):

1. Writes a devices CSV of ``--devices`` rows (valid IMEIs in a scrambled order, 10,000
   stations, 4 products, a 16-byte key each, a metrics map on every fourth) and a
   station registry CSV of those stations.
2. Imports the stations, then the devices, with ``vigil registry import`` as an operator
   runs it (a child process: its wall time and peak RSS are the import's).
   Baseline: reading the same CSV with ``csv.reader`` and nothing else (the floor any
   importer in Python pays), and a plain SQLite table (``INSERT OR REPLACE`` of the same
   encoded records, WAL) over the first million rows.
3. Disk: the store's bytes per device as the import left it, and after a full compaction.
4. Lookups through ``DeviceRegistry`` (what an ingest path calls): cache misses (random
   registered devices), cache hits, unknown identities; baselines in the same process:
   ``dict.get`` on the same devices (the in-memory floor), the raw RocksDB read, and the
   plain SQLite table's ``SELECT``. The reader's RSS before and after.
5. Stations at scale: 100,000 stations imported into the store, read back by
   ``load_registry`` and the flood pack compiled against them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rules.store import DeviceRegistry, make_imei  # noqa: E402
from rules.store.db import DEVICE, disk_bytes, open_reader, open_writer  # noqa: E402

PRODUCTS = ("waterlog-v1", "manhole-v1", "lamp-v2", "rain-v1")
N_STATIONS = 10_000
PRIME = 1_000_003  # scrambles the row order without holding a permutation


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def imei(i: int) -> str:
    return make_imei(86000000 + i // 1_000_000, i % 1_000_000)


def write_devices(path: Path, n: int) -> None:
    rng = random.Random(7)
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["identity", "station", "product", "key", "metrics"])
        for j in range(n):
            i = (j * PRIME) % n
            metrics = "depth:water_level" if i % 4 == 0 else ""
            out.writerow([imei(i), f"ST{i % N_STATIONS:05d}", PRODUCTS[i % 4],
                          rng.randbytes(16).hex(), metrics])  # fmt: skip


def write_stations(path: Path, n: int) -> None:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["id", "kind", "basin", "district", "metrics", "report_interval",
                      "warning_level", "guaranteed_level", "historical_max_level",
                      "tags"])  # fmt: skip
        for i in range(n):
            metrics = "water_level:m;rainfall:mm" if i % 2 else "water_level:m"
            out.writerow([f"ST{i:05d}", "river_gauge", f"basin{i % 50}", f"district{i % 300}",
                          metrics, "5m", "4.5", "5.8", "6.2", "nbiot"])  # fmt: skip


def vigil(*args: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and stdout of one ``vigil`` command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "engine.tools.cli", *args], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"vigil {' '.join(args)}: {done.stdout}{done.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024, done.stdout.strip()


def per_call(fn, keys) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for k in keys:
        fn(k)
    return (time.perf_counter() - t0) / len(keys) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    n = args.devices
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-registry-"))
    work.mkdir(parents=True, exist_ok=True)
    data, store = work / "data", work / "data" / "registry"
    res: dict[str, object] = {"devices": n, "load_avg_start": os.getloadavg()}

    t0 = time.perf_counter()
    devices_csv, stations_csv = work / "devices.csv", work / "stations.csv"
    write_devices(devices_csv, n)
    write_stations(stations_csv, N_STATIONS)
    res["csv_bytes"] = devices_csv.stat().st_size
    print(f"wrote {n:,} rows ({res['csv_bytes'] / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s",
          flush=True)  # fmt: skip

    # Baseline: the CSV read with nothing done to it.
    t0 = time.perf_counter()
    with devices_csv.open(newline="") as fh:
        rows = sum(1 for _ in csv.reader(fh)) - 1
    res["baseline_csv_read_rows_s"] = rows / (time.perf_counter() - t0)

    vigil("registry", "import", str(stations_csv), "--data-dir", str(data))
    wall, peak, out = vigil("registry", "import", str(devices_csv), "--data-dir", str(data))
    res.update(import_s=wall, import_rows_s=n / wall, import_peak_rss_mb=peak, import_out=out)
    res["disk_bytes_per_device"] = disk_bytes(store) / n
    print(f"import: {wall:.0f} s, {n / wall:,.0f} rows/s, peak RSS {peak:.0f} MiB, "
          f"{res['disk_bytes_per_device']:.1f} B/device on disk", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    db = open_writer(store)
    db.compact_range(None, None)
    db.close()
    res["compact_s"] = time.perf_counter() - t0
    res["disk_bytes_per_device_compacted"] = disk_bytes(store) / n

    # Baseline: a plain SQLite table over the first million rows, the same records.
    m = min(n, 1_000_000)
    sq = work / "plain.sqlite"
    conn = sqlite3.connect(sq, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE d (id TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
    reader = open_reader(store)
    it = reader.iter()
    it.seek(DEVICE)
    records = []
    while it.valid() and len(records) < m and it.key().startswith(DEVICE):
        records.append((it.key()[1:].decode(), it.value()))
        it.next()
    reader.close()
    random.Random(1).shuffle(records)  # the CSV's order is not the key order either
    t0 = time.perf_counter()
    for s in range(0, m, 10_000):
        conn.execute("BEGIN")
        conn.executemany("INSERT OR REPLACE INTO d VALUES (?, ?)", records[s : s + 10_000])
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    res["baseline_sqlite_insert_rows_s"] = m / (time.perf_counter() - t0)
    res["baseline_sqlite_bytes_per_device"] = sq.stat().st_size / m
    del records

    # Lookups.
    rng = random.Random(3)
    probe = [imei(rng.randrange(n)) for _ in range(300_000)]
    unknown = [make_imei(99000000, i) for i in range(100_000)]
    rss0 = rss_mb()
    reg = DeviceRegistry(store, cache_size=100_000)
    res["lookup_miss_us"] = per_call(reg.lookup, probe)  # mostly misses: 300 k of n
    hot = probe[:50_000]
    per_call(reg.lookup, hot)
    res["lookup_hit_us"] = per_call(reg.lookup, hot)
    res["lookup_unknown_us"] = per_call(reg.lookup, unknown)
    res["reader_rss_mb_after"] = rss_mb()
    res["reader_rss_mb_before"] = rss0
    res["reader_cached"] = reg.cached
    dev = {i: reg.lookup(i) for i in probe[:100_000]}
    res["baseline_dict_get_us"] = per_call(dev.get, probe[:100_000])
    raw = open_reader(store)
    keys = [DEVICE + i.encode() for i in probe[100_000:200_000]]
    res["baseline_rocksdb_get_us"] = per_call(raw.get, keys)
    raw.close()
    reg.close()
    conn = sqlite3.connect(sq)
    in_sqlite = [r[0] for r in conn.execute("SELECT id FROM d LIMIT 100000")]
    rng.shuffle(in_sqlite)
    sel = conn.cursor().execute
    res["baseline_sqlite_select_us"] = per_call(
        lambda k: sel("SELECT v FROM d WHERE id = ?", (k,)).fetchone(), in_sqlite
    )
    conn.close()

    # Stations at scale: 100 k into the store, back through load_registry, compiled.
    from rules.api import load_ruleset
    from rules.registry import load_registry

    big = work / "stations100k.csv"
    write_stations(big, 100_000)
    st_data = work / "stdata"
    wall, peak, _ = vigil("registry", "import", str(big), "--data-dir", str(st_data))
    res.update(stations_import_s=wall, stations_import_peak_rss_mb=peak)
    rss1 = rss_mb()
    t0 = time.perf_counter()
    registry = load_registry(st_data / "registry")
    res["stations_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = load_ruleset([ROOT / "rules/packs/flood.yaml"], registry, "en")
    res["stations_compile_flood_s"] = time.perf_counter() - t0
    res["stations_rule_rows"] = [len(r.stations) for r in compiled.ruleset.rules]
    res["stations_rss_mb_delta"] = rss_mb() - rss1
    res["load_avg_end"] = os.getloadavg()
    text = json.dumps(res, indent=2, default=str)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

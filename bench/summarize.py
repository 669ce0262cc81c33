"""Turn a ``--benchmark-json`` file of ``test_bench_kernels.py`` into the RESULTS.md table.

Usage: ``.venv/bin/python bench/summarize.py bench.json``
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    rows: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
    state = None
    for b in data["benchmarks"]:
        m = re.search(r"\[(\d+)-(\d+)-(\w+)\]", b["name"])
        if not m:
            continue
        n, batch, impl = int(m[1]), int(m[2]), m[3]
        rows[(n, batch)][impl] = b["extra_info"]["readings_per_s"]
        state = state or {k: v for k, v in b["extra_info"].items() if k.startswith("bytes_")}
    impls = [
        "engine",
        "numba",
        "numba_rulewide_qc",
        "numpy",
        "python",
    ]
    print("| sensors | batch | " + " | ".join(f"{i} (M readings/s)" for i in impls), end="")
    print(" | engine ÷ numba | engine ÷ python | numba ÷ numpy | numba ÷ python |")
    print("|---" * (len(impls) + 6) + "|")
    for (n, batch), r in sorted(rows.items()):
        cells = [f"{r[i] / 1e6:.2f}" if i in r else "–" for i in impls]
        ratios = [
            f"{r[a] / r[b]:.{digits}f}×" if a in r and b in r else "–"
            for a, b, digits in (
                ("engine", "numba", 1),
                ("engine", "python", 0),
                ("numba", "numpy", 1),
                ("numba", "python", 0),
            )
        ]
        print(f"| {n:,} | {batch:,} | " + " | ".join(cells + ratios) + " |")
    print()
    print("state bytes per sensor:", state)
    print("machine:", data["machine_info"].get("cpu", {}).get("brand_raw"), data["datetime"])


if __name__ == "__main__":
    main(sys.argv[1])

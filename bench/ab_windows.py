"""Before/after of the window kernel (``engine.evaluation.kernels.windows``), in one process, rounds
interleaved.

``before``: the module at a given path (the kernel as of an older commit, loaded under
another name); ``after``: the module in the tree. Both run the window part of
``test_bench_kernels.numba_chain`` (update, then close with the batch's watermark, per
batch) on its workload, for a tumbling ``max``, a tumbling ``delta`` (temporal buckets)
and a sliding ``sum``. The machine is noisy: read the medians and their ratio.

Usage (the old kernel from git, outside the tree)::

    mkdir -p /tmp/vigil-old && git show f15ddcc:engine/evaluation/kernels/windows.py \\
        > /tmp/vigil-old/windows_before.py
    NUMBA_CACHE_DIR=$PWD/.cache/numba .venv/bin/python bench/ab_windows.py \\
        /tmp/vigil-old/windows_before.py 1000000 5 10000
"""

from __future__ import annotations

import importlib.util
import sys
import time
from typing import Any

import numpy as np
import test_bench_kernels as b

from engine.evaluation.kernels import windows as after

SPECS = {
    "max 15m": dict(bucket_ms=b.WINDOW, aggregate="max"),
    "delta 15m": dict(bucket_ms=b.WINDOW, aggregate="delta"),
    "sum 15m/5m": dict(bucket_ms=5 * b.MIN, aggregate="sum", buckets_per_window=3),
}


def _load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("windows_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # numba's cache finds the module again by name
    spec.loader.exec_module(module)
    return module


def run(mod: Any, w: b.Workload, spec_kw: dict[str, Any], batch: int) -> tuple[float, int]:
    """Seconds for the whole workload, and the windows closed (the same for both)."""
    spec = mod.WindowSpec(**spec_kw)
    state = mod.new_window_state(w.n, spec)
    state.closed = mod.new_closed_buffer(w.n)
    b._touch(state.record, *state.closed)
    quality = np.ones(w.readings, np.uint8)
    closed = 0
    start = time.perf_counter()
    for i in range(0, w.readings, batch):
        s, t, v = w.sensor[i : i + batch], w.ts[i : i + batch], w.value[i : i + batch]
        mod.window_update(state, spec, s, t, v, quality[i : i + batch])
        closed += len(mod.window_close_until(state, spec, int(t.max()) - b.MIN).sensor)
    closed += len(mod.window_close_until(state, spec, mod.END_OF_INPUT).sensor)
    return time.perf_counter() - start, closed


def main(old_path: str, n: int, rounds: int, batch: int) -> None:
    impls = {"before": _load(old_path), "after": after}
    w, small = b.workload(n), b.workload_small()
    for mod in impls.values():  # compile, or load from the cache
        for kw in SPECS.values():
            run(mod, small, kw, 1000)
    for label, kw in SPECS.items():
        runs: dict[str, list[float]] = {k: [] for k in impls}
        counts = set()
        for _ in range(rounds):
            for name, mod in impls.items():
                seconds, closed = run(mod, w, kw, batch)
                runs[name].append(w.readings / seconds / 1e6)
                counts.add(closed)
        assert len(counts) == 1, f"{label}: the two close different windows: {counts}"
        med = {k: float(np.median(v)) for k, v in runs.items()}
        print(f"{label}: {n:,} sensors, batches of {batch:,}, {rounds} rounds (M readings/s)")
        for k, v in runs.items():
            print(f"  {k:7s} median {med[k]:6.2f}  rounds {[round(x, 1) for x in v]}")
        print(f"  after/before {med['after'] / med['before']:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))

"""Before/after of the engine's early-firing path, in one process, rounds interleaved.

``before``: the path as of commit babe702 (``qc_batch``, then ``health.observe``, then
the 80-byte tumbling kernel, 132 bytes of state per sensor in three arrays and the
thresholds in a fourth); ``after``: the one-pass kernel (``engine_chain`` of
``test_bench_kernels.py``); ``chain_rulewide``: the window chain with rule-wide QC
limits, the same-run anchor. Both engine paths use rule-wide QC limits, as the engine's
rules have them. Same workload as ``test_bench_kernels.py``; the machine is noisy, so
the rounds alternate and the medians and ratios are what to read.

Usage (the old kernel from git, outside the tree)::

    mkdir -p /tmp/vigil-babe702 && git archive babe702 engine/kernels/tumbling_levels.py \\
        | tar -x -C /tmp/vigil-babe702
    NUMBA_CACHE_DIR=$PWD/.cache/numba .venv/bin/python bench/ab_early_firing.py \\
        /tmp/vigil-babe702/engine/kernels/tumbling_levels.py 10000000 5 100000 10000
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import test_bench_kernels as b

from engine.evaluation.kernels.health import new_health_state, observe
from engine.evaluation.kernels.qc import new_qc_state, qc_batch
from engine.evaluation.kernels.tumbling_levels import (
    transition_arrays,  # the old kernel's layout too
)


def _load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("tumbling_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # numba's cache finds the module again by name
    spec.loader.exec_module(module)
    return module


Impl = tuple[Callable[..., tuple[Any, ...]], Callable[..., int]]


def before(old: Any) -> Impl:
    """Setup and round of the old path, as the old ``engine_chain`` ran it."""

    def setup(w: b.Workload) -> tuple[Any, ...]:
        qs, hs, st = new_qc_state(w.n), new_health_state(w.n), old.new_state(w.n)
        thr = np.ascontiguousarray(w.levels.thresholds)
        b._touch(qs, hs, st, thr)
        return qs, hs, st, thr, w.sensor.astype(np.int32)

    def chain(w: b.Workload, batch: int, qs: Any, hs: Any, st: Any, thr: Any, s32: Any) -> int:
        transitions, now, next_close = 0, b.T0 + 20 * b.MIN, b.NEVER
        window, deadband = b.WINDOW, b.DEADBAND
        for i in range(0, w.readings, batch):
            s, t, v = s32[i : i + batch], w.ts[i : i + batch], w.value[i : i + batch]
            flags = qc_batch(qs, w.qc_shared, s, t, v, now)
            observe(hs, 3, s, t, v, flags)
            usable = flags < 4
            s, t, v = s[usable], t[usable], v[usable]
            out = transition_arrays(2 * len(t))
            transitions += old.process(st, thr, 1, deadband, window, 0, s, t, v, *out)
            next_close = min(next_close, int(t.min()) // window * window + window)
            if int(t.max()) - b.MIN >= next_close:
                out = transition_arrays(w.n)
                closing = int(t.max()) - b.MIN
                transitions += old.close_windows(st, thr, 1, deadband, window, closing, *out)
                next_close = old.earliest_open_end(st, window)
        end = b.T0 + window + b.MIN
        return transitions + old.close_windows(
            st, thr, 1, deadband, window, end, *transition_arrays(w.n)
        )

    return setup, chain


def main(old_path: str, n: int, rounds: int, batches: list[int]) -> None:
    impls: dict[str, Impl] = {
        "before": before(_load(old_path)),
        "after": (b.engine_setup, b.engine_chain),
        "chain_rulewide": (b.numba_setup, b.numba_chain_shared_qc),
    }
    w, small = b.workload(n), b.workload_small()
    for setup, chain in impls.values():  # compile, or load from the cache
        chain(small, 1000, *setup(small))
    for batch in batches:
        runs: dict[str, list[float]] = {k: [] for k in impls}
        for _ in range(rounds):
            for name, (setup, chain) in impls.items():
                args = setup(w)
                start = time.perf_counter()
                chain(w, batch, *args)
                runs[name].append(w.readings / (time.perf_counter() - start) / 1e6)
                del args
        med = {k: float(np.median(v)) for k, v in runs.items()}
        print(f"{n:,} sensors, batches of {batch:,}, {rounds} rounds (M readings/s)")
        for k, v in runs.items():
            print(f"  {k:15s} median {med[k]:6.2f}  rounds {[round(x, 1) for x in v]}")
        print(
            f"  after/before {med['after'] / med['before']:.2f}x, "
            f"after/chain {med['after'] / med['chain_rulewide']:.2f}x, "
            f"before/chain {med['before'] / med['chain_rulewide']:.2f}x"
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [int(x) for x in sys.argv[4:]])

"""Throughput of the tumbling flood rule: QC → 15-min tumbling max → four levels.

One round replays one whole window period: every sensor reports every 5 min (3 readings
per sensor, shuffled within each 5-min slot, so state access is random), in batches;
after each batch the watermark (newest reading − 1 min) closes what it can, and the
window period ends with one close over all sensors and the level evaluation of every
closed window. So a round's time includes the amortised close and level cost.

Implementations, measured in the same run on the same readings:

- ``numba``: :mod:`engine.evaluation.kernels.qc`, :mod:`~engine.evaluation.kernels.windows`,
  :mod:`~engine.evaluation.kernels.levels` as the engine calls them, per-sensor QC thresholds;
- ``numba_rulewide_qc``: the same with one set of QC thresholds for the whole rule;
- ``engine``: the engine's path for a max rule (:mod:`engine.evaluation.kernels.tumbling_levels` as
  :mod:`engine.evaluation.runners.tumbling` calls it): QC, sensor health, the window's running
  maximum and the levels in one pass over one 128-byte block per sensor (80 bytes of
  state, the sensor's thresholds, padding), escalating early; QC limits rule-wide, as
  the engine's rules have them, level thresholds per sensor;
- ``numpy``: vectorised per batch (gather/scatter, ``np.maximum.at``); it does *less*
  than the kernels: no flat-line or rate test, no lateness, readings of one sensor within
  a batch are not ordered for the spike test;
- ``python``: a per-reading loop with dicts, the way a Faust agent with per-key Python
  state would do it (only up to 1 M sensors: 10 M dict entries take many GB).

``VIGIL_BENCH_FULL=1`` adds 10 M sensors. Results and the command: ``bench/RESULTS.md``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from engine.evaluation.kernels import tumbling_levels as tumbling
from engine.evaluation.kernels._common import NO_TS
from engine.evaluation.kernels.levels import (
    LEVELS_STATE_DTYPE,
    LevelParams,
    levels_evaluate,
    new_levels_state,
)
from engine.evaluation.kernels.qc import (
    QC_PARAMS_DTYPE,
    QC_STATE_DTYPE,
    QCParams,
    new_qc_state,
    qc_batch,
    time_limits,
)
from engine.evaluation.kernels.windows import (
    WindowSpec,
    new_closed_buffer,
    new_window_state,
    window_close_until,
    window_update,
)

FULL = os.environ.get("VIGIL_BENCH_FULL") == "1"
SIZES = [100_000, 1_000_000, *([10_000_000] if FULL else [])]
BATCHES = [10_000, 100_000]
MIN = 60_000
WINDOW = 15 * MIN
T0 = 1_700_000_100_000 // WINDOW * WINDOW
THRESHOLDS = (8.0, 10.0, 12.0, 14.0)  # m, blue..red
DEADBAND = 0.3


@dataclass(frozen=True)
class Workload:
    n: int
    sensor: npt.NDArray[np.uint32]
    ts: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    qc: QCParams
    qc_shared: QCParams
    levels: LevelParams
    spec: WindowSpec

    @property
    def readings(self) -> int:
        return len(self.ts)


@lru_cache(maxsize=3)
def workload(n: int) -> Workload:
    rng = np.random.default_rng(20230422)
    sensor = np.concatenate([rng.permutation(n).astype(np.uint32) for _ in range(3)])
    slot = np.repeat(np.arange(3, dtype=np.int64), n)
    ts = T0 + slot * 5 * MIN + rng.integers(0, 5 * MIN, 3 * n)
    value = rng.normal(6.0, 3.0, 3 * n)  # water level, m: ~25 % of windows reach a level
    value[rng.random(3 * n) < 0.001] = np.nan
    levels = LevelParams(np.tile(np.array([THRESHOLDS]), (n, 1)), deadband=DEADBAND)
    qc, shared = _qc_params(n), _qc_params(1)
    return Workload(n, sensor, ts, value, qc, shared, levels, WindowSpec(bucket_ms=WINDOW))


def _qc_params(n: int) -> QCParams:
    full = np.full
    return QCParams(
        fail_lo=full(n, -5.0),
        fail_hi=full(n, 40.0),
        suspect_lo=full(n, -1.0),
        suspect_hi=full(n, 25.0),
        spike=full(n, 12.0),
        rate_per_h=full(n, 200.0),
        flat_eps=1e-9,
        flat_suspect_n=12,
        flat_fail_n=48,
    )


def _touch(*arrays: npt.NDArray[Any]) -> None:
    """Fault the pages in now, outside the timed region."""
    for a in arrays:
        a.view(np.uint8).reshape(-1)[::4096] = a.view(np.uint8).reshape(-1)[::4096]


# --- numba kernels ----------------------------------------------------------------------


def numba_setup(w: Workload) -> tuple[Any, ...]:
    qs, ws, ls = new_qc_state(w.n), new_window_state(w.n, w.spec), new_levels_state(w.n)
    ws.closed = closed = new_closed_buffer(w.n)  # the engine keeps one per rule and reuses it
    _touch(qs, ws.buckets, ls, w.qc.packed, *closed)
    return qs, ws, ls, closed


def numba_chain(
    w: Workload, batch: int, qs: Any, ws: Any, ls: Any, buf: Any, shared: bool = False
) -> int:
    transitions = 0
    now = T0 + 20 * MIN
    qc = w.qc_shared if shared else w.qc
    for i in range(0, w.readings, batch):
        s, t, v = w.sensor[i : i + batch], w.ts[i : i + batch], w.value[i : i + batch]
        flags = qc_batch(qs, qc, s, t, v, now)
        window_update(ws, w.spec, s, t, v, flags)
        closed = window_close_until(ws, w.spec, int(t.max()) - MIN)
        tr = levels_evaluate(ls, w.levels, closed.sensor, closed.window_end, closed.value)
        transitions += len(tr.ts)
    closed = window_close_until(ws, w.spec, T0 + WINDOW + MIN)
    return transitions + len(
        levels_evaluate(ls, w.levels, closed.sensor, closed.window_end, closed.value).ts
    )


NEVER = int(np.iinfo(np.int64).max)


# --- NumPy, vectorised per batch -----------------------------------------------------------


def numpy_setup(w: Workload) -> tuple[Any, ...]:
    last = np.full(w.n, np.nan)
    wmax = np.full(w.n, -np.inf)
    level = np.zeros(w.n, dtype=np.int8)
    _touch(last, wmax, level)
    return last, wmax, level


def numpy_chain(w: Workload, batch: int, last: Any, wmax: Any, level: Any) -> int:
    p = w.qc
    for i in range(0, w.readings, batch):
        s, v = w.sensor[i : i + batch], w.value[i : i + batch]
        ok = ~np.isnan(v) & (v >= p.fail_lo[s]) & (v <= p.fail_hi[s])
        # spike/suspect flags do not exclude a reading from the window; computed for parity
        _suspect = (
            (v < p.suspect_lo[s]) | (v > p.suspect_hi[s]) | (np.abs(v - last[s]) > p.spike[s])
        )
        last[s[ok]] = v[ok]
        np.maximum.at(wmax, s[ok], v[ok])
    has = np.isfinite(wmax)
    agg = wmax[has]
    thr = w.levels.thresholds[has]
    raw = (agg[:, None] >= thr).sum(axis=1)
    held = (agg[:, None] >= thr - DEADBAND) & (np.arange(1, 5) <= level[has][:, None])
    hold = np.where(held, np.arange(1, 5), 0).max(axis=1)
    new = np.maximum(raw, hold)
    changed = new != level[has]
    level[np.flatnonzero(has)[changed]] = new[changed]
    return int(changed.sum())


# --- pure Python, per reading, dicts -------------------------------------------------------


def python_setup(w: Workload) -> tuple[Any, ...]:
    return {}, {}, {}


def python_chain(w: Workload, batch: int, qc: dict, win: dict, lev: dict) -> int:  # type: ignore[type-arg]
    p = w.qc
    fail_lo, fail_hi = p.fail_lo.tolist(), p.fail_hi.tolist()
    spike = p.spike.tolist()
    thr = THRESHOLDS
    transitions = 0
    for i in range(0, w.readings, batch):
        rows = zip(
            w.sensor[i : i + batch].tolist(),
            w.ts[i : i + batch].tolist(),
            w.value[i : i + batch].tolist(),
            strict=True,
        )
        for s, t, v in rows:
            if math.isnan(v) or v < fail_lo[s] or v > fail_hi[s]:
                continue
            prev = qc.get(s)
            _spike = prev is not None and abs(v - prev[0]) > spike[s]
            qc[s] = (v, t)
            k = t // WINDOW
            cur = win.get(s)
            if cur is None or cur[0] != k or v > cur[1]:
                win[s] = (k, v)
    for s, (_k, agg) in win.items():
        c = lev.get(s, 0)
        raw = sum(1 for x in thr if agg >= x)
        hold = max((j + 1 for j in range(c) if agg >= thr[j] - DEADBAND), default=0)
        new = max(raw, hold)
        if new != c:
            lev[s] = new
            transitions += 1
    return transitions


def numba_chain_shared_qc(w: Workload, batch: int, qs: Any, ws: Any, ls: Any, buf: Any) -> int:
    """The same with rule-wide QC thresholds (one value for all sensors)."""
    return numba_chain(w, batch, qs, ws, ls, buf, shared=True)


# --- the engine's path for a max rule: QC, sensor health, window and levels in one pass ----


def engine_setup(w: Workload) -> tuple[Any, ...]:
    state = tumbling.new_state(w.n)
    tumbling.set_thresholds(state, w.levels.thresholds)  # per sensor, as station fields are
    sensor = w.sensor.astype(np.int32)
    quality = np.zeros(w.readings, np.uint8)  # no incoming flags
    _touch(state)
    return state, sensor, quality


def engine_params(w: Workload) -> tumbling.Params:
    """The workload's QC limits, rule-wide: the engine's rules have no per-sensor ones."""
    q = w.qc_shared
    limits = [float(a[0]) for a in (q.fail_lo, q.fail_hi, q.suspect_lo, q.suspect_hi, q.spike)]
    lo, hi, slo, shi, spike = limits
    qc = (lo, hi, slo, shi, spike, float(q.rate_per_h[0]), q.flat_eps, q.flat_suspect_n,
          q.flat_fail_n)  # fmt: skip
    return tumbling.make_params(1, DEADBAND, WINDOW, 0, 3, qc)


def engine_chain(w: Workload, batch: int, state: Any, s32: Any, quality: Any) -> int:
    """What ``engine.evaluation.runners.tumbling`` does per batch."""
    transitions = 0
    params = engine_params(w)
    future, past = time_limits(w.qc_shared, T0 + 20 * MIN)
    next_close = NEVER
    out = tumbling.outputs(batch)  # the runner keeps them between batches
    for i in range(0, w.readings, batch):
        s, t, v = s32[i : i + batch], w.ts[i : i + batch], w.value[i : i + batch]
        n_tr, _, _ = tumbling.process(
            state, params, (future, past, NO_TS), s, t, v, quality[i : i + batch], out
        )
        transitions += n_tr
        next_close = min(next_close, int(t.min()) // WINDOW * WINDOW + WINDOW)
        if int(t.max()) - MIN >= next_close:  # the runner's gate: one scan per window
            tr = tumbling.transition_arrays(w.n)
            n_tr, next_close = tumbling.close_windows(state, params, int(t.max()) - MIN, tr)
            transitions += n_tr
    tr = tumbling.transition_arrays(w.n)
    return transitions + tumbling.close_windows(state, params, T0 + WINDOW + MIN, tr)[0]


IMPLS = {
    "engine": (engine_setup, engine_chain),
    "numba": (numba_setup, numba_chain),
    "numba_rulewide_qc": (numba_setup, numba_chain_shared_qc),
    "numpy": (numpy_setup, numpy_chain),
    "python": (python_setup, python_chain),
}

STATE_BYTES = {
    "qc_state": QC_STATE_DTYPE.itemsize,
    "window_state": WindowSpec(bucket_ms=WINDOW).bytes_per_sensor,
    "levels_state": LEVELS_STATE_DTYPE.itemsize,
    "qc_params": QC_PARAMS_DTYPE.itemsize,
    "thresholds": 4 * 8,
}
#: The engine's early-firing path: one record per sensor for QC, health, window, levels.
ENGINE_STATE_BYTES = sum(tumbling.BLOCK_DTYPE[f].itemsize for f in tumbling.STATE_FIELDS)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("n", SIZES)
def test_tumbling_flood_rule(benchmark: Any, n: int, batch: int, impl: str) -> None:
    if impl == "python" and n > 1_000_000:
        pytest.skip("per-reading Python with dicts: 10 M sensors do not fit the run")
    w = workload(n)
    setup, chain = IMPLS[impl]
    if impl.startswith(("numba", "engine")):  # compile (or load from cache) before timing
        chain(workload_small(), 1000, *setup(workload_small()))
    rounds = 1 if (impl == "python" and n >= 1_000_000) else 3
    result = benchmark.pedantic(
        chain, setup=lambda: ((w, batch, *setup(w)), {}), rounds=rounds, iterations=1
    )
    assert result > 0  # some windows changed level: the work was really done
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        readings=w.readings,
        readings_per_s=w.readings / median,
        state_bytes_per_sensor=ENGINE_STATE_BYTES
        if impl == "engine"
        else sum(v for k, v in STATE_BYTES.items() if k.endswith("state")),
        **{f"bytes_{k}": v for k, v in STATE_BYTES.items()},
        bytes_engine_state=ENGINE_STATE_BYTES,
        bytes_engine_block=tumbling.BLOCK_DTYPE.itemsize,
    )


def workload_small() -> Workload:
    return _small()


@lru_cache(maxsize=1)
def _small() -> Workload:
    return workload.__wrapped__(1000)

"""The compiled loops of :mod:`engine.evaluation.kernels.windows` (which states their contract).

The two kernels take their state as tuples, so that the argument lists are written once:

* ``rb``: a sensor ring's fields ``(k, n, a, b, ta, tb)``, each (n_sensors, ring); a
  simple bucket passes ``a`` again for ``b`` and empty arrays for the times;
* ``geo``: ``(aggregate code, bucket_ms, m, ring, lateness_ms)``;
* ``out``: the closed windows' columns ``(sensor, window_end, value, count, span_sums,
  provisional)``.

The helpers are inlined (``inline="always"``): numba reference-counts every array an
actual call passes, which for a dozen arrays costs more than closing a sensor's window.
They take the arrays one by one, unpacked once per kernel call: an array taken out of a
tuple inside the per-reading loop is reference-counted there, which measured 2-3x slower.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from engine.evaluation.kernels._common import MS_PER_HOUR, NO_TS, Q_FAIL, Q_MISSING
from engine.evaluation.kernels._prefetch import PREFETCH_AHEAD, prefetch, prefetch2

ACCEPTED, LATE, EXCLUDED = 0, 1, 3
#: A watermark at or past this (ms) ends the input: every window closes, tails too.
END_OF_INPUT = 2**62
SUM, MEAN, COUNT, MIN, MAX, FIRST, LAST, DELTA, RATE = range(9)
TEMPORAL_FROM = FIRST


@njit(cache=True)
def is_ordered(end, sensor):  # type: ignore[no-untyped-def]
    for i in range(1, end.shape[0]):
        if end[i] < end[i - 1] or (end[i] == end[i - 1] and sensor[i] < sensor[i - 1]):
            return False
    return True


@njit(cache=True, inline="always")
def _bucket(t, bucket_ms, inv):  # type: ignore[no-untyped-def]
    # two 64-bit integer divisions per reading cost more than the rest of the loop: the
    # bucket comes from a float multiply, corrected by one step (|t| < 2**53 is exact)
    kb = np.int64(np.floor(t * inv))
    if kb * bucket_ms > t:
        kb -= 1
    elif (kb + 1) * bucket_ms <= t:
        kb += 1
    return kb


@njit(cache=True, inline="always")
def _slot(kb, ring, inv_ring):  # type: ignore[no-untyped-def]
    """``kb % ring`` (the bucket's place in a sensor's ring), without a division."""
    r = kb - np.int64(kb * inv_ring) * ring
    if r < 0:
        r += ring
    elif r >= ring:
        r -= ring
    return r


@njit(cache=True, inline="always")
def _holds(kk, nn, s, kb, slot):  # type: ignore[no-untyped-def]
    """Whether sensor ``s``'s ring slot ``slot`` holds readings of bucket ``kb``."""
    return nn[s, slot] != 0 and kk[s, slot] == np.uint32(kb & 0xFFFFFFFF)


@njit(cache=True, inline="always")
def _data_range(kk, nn, s, nc, m, ring, inv_ring):  # type: ignore[no-untyped-def]
    """First and last bucket holding readings among those of the open windows
    (``nc-m+1 .. nc-m+ring``); (1, 0) when none does."""
    first, last = np.int64(1), np.int64(0)
    kb = nc - m + 1
    slot = _slot(kb, ring, inv_ring)
    for _ in range(ring):
        if _holds(kk, nn, s, kb, slot):
            if first > last:
                first = kb
            last = kb
        kb += 1
        slot += 1
        if slot == ring:
            slot = 0
    return first, last


@njit(cache=True)  # not inlined: only a reading behind its open windows calls it
def _newest(kk, nn, s, nc, m, ring, inv_ring):  # type: ignore[no-untyped-def]
    """The newest bucket holding readings of sensor ``s`` from ``nc - m`` on (the oldest
    a watermark's close can leave: at the end of the input), ``nc - m - 1`` if none."""
    kb = nc - m + ring
    while kb >= nc - m:
        if _holds(kk, nn, s, kb, _slot(kb, ring, inv_ring)):
            return kb
        kb -= 1
    return kb


@njit(cache=True, inline="always")
def _close_sensor(  # type: ignore[no-untyped-def]
    kk, nn, aa, bb, ta, tb, agg, s, nc, k1, first, last, bucket_ms, m, ring, spans,
    o_s, o_e, o_v, o_n, o_x, o_p, j,
):  # fmt: skip
    """Emit sensor ``s``'s windows ``nc .. k1-1`` that hold readings (its buckets
    ``first .. last``, see :func:`_data_range`), from row ``j``; returns the next row.
    At most ``ring`` rows: later windows hold no bucket."""
    if first > last:
        return j
    inv_ring = 1.0 / ring
    temporal = agg >= TEMPORAL_FROM
    n_spans = spans.shape[0]
    for k in range(max(nc, first), min(k1, last + m)):
        cnt = 0
        acc = fa = fb = 0.0
        t0 = t1 = 0
        for x in range(n_spans):
            o_x[j, x] = 0.0
        kb = k - m + 1
        slot = _slot(kb, ring, inv_ring)
        for _ in range(m):
            c = nn[s, slot]
            if c != 0 and kk[s, slot] == np.uint32(kb & 0xFFFFFFFF):
                x = aa[s, slot]
                if cnt == 0:
                    acc = x
                    if temporal:
                        fa = x
                        t0 = ta[s, slot]
                elif agg == MIN:
                    acc = min(acc, x)
                elif agg == MAX:
                    acc = max(acc, x)
                elif not temporal:
                    acc += x
                if temporal:
                    fb = bb[s, slot]
                    t1 = tb[s, slot]
                for y in range(n_spans):
                    if k - kb < spans[y]:
                        o_x[j, y] += x
                cnt += c
            kb += 1
            slot += 1
            if slot == ring:
                slot = 0
        if cnt == 0:
            continue
        if agg == MEAN:
            acc = acc / cnt
        elif agg == COUNT:
            acc = float(cnt)
        elif agg == FIRST:
            acc = fa
        elif agg == LAST:
            acc = fb
        elif agg == DELTA:
            acc = fb - fa
        elif agg == RATE:
            acc = (fb - fa) / (t1 - t0) * MS_PER_HOUR if t1 > t0 else np.nan
        o_s[j] = s
        o_e[j] = (k + 1) * bucket_ms
        o_v[j] = acc
        o_n[j] = cnt
        o_p[j] = False
        j += 1
    return j


@njit(cache=True, inline="always")
def _fold(kk, nn, aa, bb, ta, tb, s, slot, kb, t, v, temporal, agg):  # type: ignore[no-untyped-def]
    """Add reading ``(t, v)`` to sensor ``s``'s bucket ``kb`` (ring slot ``slot``)."""
    key = np.uint32(kb & 0xFFFFFFFF)
    if nn[s, slot] == 0 or kk[s, slot] != key:
        kk[s, slot] = key
        nn[s, slot] = 1
        aa[s, slot] = v
        if temporal:
            bb[s, slot] = v
            ta[s, slot] = t
            tb[s, slot] = t
        return
    nn[s, slot] += 1
    if temporal:
        if t < ta[s, slot]:
            aa[s, slot] = v
            ta[s, slot] = t
        if t >= tb[s, slot]:
            bb[s, slot] = v
            tb[s, slot] = t
    elif agg == MIN:
        if v < aa[s, slot]:
            aa[s, slot] = v
    elif agg == MAX:
        if v > aa[s, slot]:
            aa[s, slot] = v
    else:
        aa[s, slot] += v


@njit(cache=True)
def update_kernel(rb, clock, due, geo, spans, batch, watermark, codes, start, out, j):  # type: ignore[no-untyped-def]
    """Readings ``start..`` of ``batch = (sensor, ts, value, quality)``; returns (the first
    reading not done, the next output row). ``clock = (next_close, heard)``. Stops early
    when fewer than ``ring`` output rows are left (the caller grows them)."""
    kk, nn, aa, bb, ta, tb = rb
    o_s, o_e, o_v, o_n, o_x, o_p = out
    next_close, heard = clock
    sensor, ts, value, quality = batch
    agg, bucket_ms, m, ring, lateness = geo
    n = ts.shape[0]
    cap = o_s.shape[0]
    inv = 1.0 / bucket_ms
    inv_ring = 1.0 / ring
    temporal = agg >= TEMPORAL_FROM
    first_due = due[0]
    for i in range(start, n):
        if i + PREFETCH_AHEAD < n:
            ahead = sensor[i + PREFETCH_AHEAD]
            prefetch2(kk, ahead, 0)
            prefetch2(kk, ahead, ring - 1)
            prefetch(next_close, ahead)  # the clock record: next_close and heard
        s = sensor[i]
        heard[s] = watermark
        v = value[i]
        q = quality[i]
        if q in (Q_FAIL, Q_MISSING) or np.isnan(v):
            codes[i] = EXCLUDED
            continue
        t = ts[i]
        nc = next_close[s]
        if nc == NO_TS:  # its first reading starts the sensor's clock
            nc = _bucket(t - lateness, bucket_ms, inv)
            next_close[s] = nc
        elif t - lateness >= (nc + 1) * bucket_ms:  # its own time closes window nc (and on)
            if j + ring > cap:
                due[0] = first_due
                return i, j
            k_own = _bucket(t - lateness, bucket_ms, inv)
            first, last = _data_range(kk, nn, s, nc, m, ring, inv_ring)
            j = _close_sensor(kk, nn, aa, bb, ta, tb, agg, s, nc, k_own, first, last, bucket_ms,
                              m, ring, spans, o_s, o_e, o_v, o_n, o_x, o_p, j)  # fmt: skip
            nc = k_own
            next_close[s] = nc
        kb = _bucket(t, bucket_ms, inv)
        if kb < nc and nc - m <= _newest(kk, nn, s, nc, m, ring, inv_ring) <= kb:
            # Nothing of the sensor's is newer than this bucket: only the watermark closed
            # its windows, while the sensor was silent (its own readings never close the
            # window of their newest bucket). It goes on where it stopped: reopen them.
            nc = kb
            next_close[s] = nc
        if kb + m - 1 < nc:
            codes[i] = LATE
            continue
        if kb > nc - m + ring:  # only with a ring shorter than the default: make room
            if j + ring > cap:
                due[0] = first_due
                return i, j
            k_room = kb - ring + m
            first, last = _data_range(kk, nn, s, nc, m, ring, inv_ring)
            j = _close_sensor(kk, nn, aa, bb, ta, tb, agg, s, nc, k_room, first, last,
                              bucket_ms, m, ring, spans, o_s, o_e, o_v, o_n, o_x, o_p,
                              j)  # fmt: skip
            nc = k_room
            next_close[s] = nc
        codes[i] = ACCEPTED
        # the earliest watermark that may close this reading's first open window
        w_due = max((max(kb, nc) + 1) * bucket_ms, watermark) + lateness
        if w_due < first_due:
            first_due = w_due
        _fold(kk, nn, aa, bb, ta, tb, s, _slot(kb, ring, inv_ring), kb, t, v, temporal, agg)
    due[0] = first_due
    return n, j


@njit(cache=True)
def close_silent_kernel(rb, clock, geo, spans, watermark, start, due, out, j):  # type: ignore[no-untyped-def]
    """Close the due windows of silent sensors ``start..``; returns (the first sensor
    not done, the next output row, the next due watermark of the sensors done)."""
    kk, nn, aa, bb, ta, tb = rb
    o_s, o_e, o_v, o_n, o_x, o_p = out
    next_close, heard = clock
    agg, bucket_ms, m, ring, lateness = geo
    n_sensors = next_close.shape[0]
    cap = o_s.shape[0]
    inv_ring = 1.0 / ring
    k_wm = _bucket(watermark - lateness, bucket_ms, 1.0 / bucket_ms)
    for s in range(start, n_sensors):
        nc = next_close[s]
        if nc == NO_TS:
            continue
        first, last = _data_range(kk, nn, s, nc, m, ring, inv_ring)
        # Up to the window ending with its newest reading's bucket, not past it: a
        # backlog after the silence must find its own windows open (and reopens that
        # one). A sliding window's tail (later windows, holding only older buckets)
        # waits for the sensor's own time, or the end of the input.
        k_stop = last + m if watermark >= END_OF_INPUT else last + 1
        w0 = max(nc, first)  # its first window holding a reading
        if first > last or w0 >= k_stop:
            continue  # nothing the watermark may close: only its next reading matters
        silent = heard[s] + lateness  # the watermark at which it counts as silent
        if w0 < k_wm and silent <= watermark:
            if j + ring > cap:
                return s, j, due
            k1 = min(k_wm, k_stop)
            j = _close_sensor(kk, nn, aa, bb, ta, tb, agg, s, nc, k1, first, last, bucket_ms, m,
                              ring, spans, o_s, o_e, o_v, o_n, o_x, o_p, j)  # fmt: skip
            next_close[s] = k1
            if k1 == k_stop:
                # the window of its newest bucket: the sensor may only be holding the rest
                o_p[j - 1] = watermark < END_OF_INPUT
                continue
            w0 = k1
        d = max((w0 + 1) * bucket_ms + lateness, silent)
        if d < due:
            due = d
    return n_sensors, j, due

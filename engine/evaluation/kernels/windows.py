"""Event-time tumbling and sliding windows, each sensor on its own clock.

Contract
--------
Time is event time in ms since epoch, UTC. Windows are aligned to the epoch: bucket
``k`` covers ``[k*bucket_ms, (k+1)*bucket_ms)``; the window *ending* at bucket ``k`` covers
buckets ``k-m+1 .. k`` (``m = buckets_per_window``; ``m = 1`` is a tumbling window,
``m > 1`` a window of ``m*bucket_ms`` sliding by ``bucket_ms``) and has
``window_end = (k+1)*bucket_ms`` (exclusive).

Every sensor keeps its own clock: the first of its windows not yet closed. A sensor's
window closes

- when the sensor's own readings reach ``window_end + lateness_ms``: a sensor is judged
  in its own event time, so a store-and-forward backlog (hours of buffered readings sent
  in order after a coverage gap) is evaluated as it would have been live, however far
  behind the partition's other sensors it is, and whether it comes in one batch or many;
- or, for a *silent* sensor, when the partition watermark reaches
  ``window_end + lateness_ms`` (:func:`window_close_until`). Silent: nothing heard from
  the sensor while the watermark advanced by ``lateness_ms`` (with no lateness, at once).
  The watermark closes its windows up to the one ending with its newest reading's
  bucket, and no further. A sliding window's *tail* (the windows after that one, which
  hold only older buckets and would only shrink) waits for the sensor's own readings,
  or for :data:`END_OF_INPUT`: a gap must not evaluate them without the data the device
  is still holding, and a gauge that fell silent must not be cleared by its data ageing.

A watermark's close is *provisional*: the window ending with the silent sensor's newest
bucket is emitted on time (a gauge that is quiet, or gone, is still decided), but its
buckets stay, and the sensor's next reading of that bucket or a later one (nothing of
the sensor's being newer) *reopens* the windows that hold it: the device was only
holding its readings. Such a window is emitted again when it closes again, with what the
backlog added. The sensor's own readings never close the window of their newest bucket,
so reopening never undoes a close that the sensor's own time made.

Hence, for readings in each sensor's own order, every window's last emission equals that
of an event-time-sorted run without lateness, however the readings are batched and
interleaved with other sensors'; where a sensor fell silent mid-window, the window was
also emitted before, with the readings then known (what a live engine had to decide on).

:func:`window_update` adds readings (any order; a sensor's own order is what counts)
and returns a code per reading:

- ``ACCEPTED`` (0): added; this includes a reading behind its sensor's newest whose
  window is still open (within the allowed lateness), and one that reopens windows;
- ``LATE`` (1): every window the reading belongs to is closed *for its sensor* (by its
  own later readings, or while it was silent and it has newer readings); dead-letter it;
- ``EXCLUDED`` (3): NaN value, or QC flag FAIL or MISSING; SUSPECT readings are used.
  Excluded readings do not move the sensor's clock.

No reading is ever refused for being too far ahead: before a reading is added, the
windows its own time has passed are closed, which keeps the sensor's buckets within its
ring (a ring shorter than the default closes the oldest windows early instead).

Closed windows: the update keeps those its readings closed; :func:`window_close_until`
adds those the watermark closes and returns them all, ordered by
``(window_end, sensor)`` (so each sensor's in time order, as
:mod:`engine.evaluation.kernels.levels` needs, which takes a window emitted again at its end as a
new decision). Call it after each batch with the partition's watermark; it costs O(1)
when no silent sensor's window is due, and one pass over the state when one may be
(about once per bucket for sensors that report on time; about once per lateness while
a sensor runs behind the partition). The update is O(1) per reading plus O(m) per
window closed (each bucket is aggregated once per window it is in), and O(ring) for a
reading older than its sensor's open windows.

Aggregates: ``sum``, ``mean``, ``count``, ``min``, ``max`` (the "simple" ones, 16-byte
buckets) and ``first``, ``last`` (by event time; a tie goes to the later arrival),
``delta`` (last − first), ``rate`` (delta per hour between the first and last reading's
times; NaN for a single reading) (the "temporal" ones, 40-byte buckets). Values are in the
metric's unit; ``rate`` in unit/h. A ``sum`` window can also report the sums over its
last ``spans[i]`` buckets (``new_window_state(spans=...)``; rainfall's 1/3/6/24 h).

State (plain arrays, checkpointable): one record per sensor, its ``clock``
(``CLOCK_DTYPE``) then its ``buckets`` (a ring of one of the bucket dtypes), so that a
reading touches one place in memory. A tumbling ``max`` rule with the default ring of 2
costs 48 bytes per sensor. The compiled loops are in :mod:`engine.evaluation.kernels.windows_njit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from engine.evaluation.kernels import windows_njit as nj
from engine.evaluation.kernels._common import NO_TS, TS_MAX, check_sensors
from engine.evaluation.kernels.windows_njit import ACCEPTED, END_OF_INPUT, EXCLUDED, LATE

__all__ = [
    "ACCEPTED",
    "AGGREGATES",
    "CLOCK_DTYPE",
    "END_OF_INPUT",
    "EXCLUDED",
    "LATE",
    "ClosedWindows",
    "WindowSpec",
    "WindowState",
    "grow_window_state",
    "new_closed_buffer",
    "new_window_state",
    "window_close_until",
    "window_update",
]

Aggregate = Literal["sum", "mean", "count", "min", "max", "first", "last", "delta", "rate"]
AGGREGATES: tuple[Aggregate, ...] = (
    "sum",
    "mean",
    "count",
    "min",
    "max",
    "first",
    "last",
    "delta",
    "rate",
)

SIMPLE_BUCKET = np.dtype([("k", "u4"), ("n", "u4"), ("a", "f8")])
TEMPORAL_BUCKET = np.dtype(
    [("k", "u4"), ("n", "u4"), ("a", "f8"), ("b", "f8"), ("ta", "i8"), ("tb", "i8")]
)
#: Per sensor: the first of its windows not yet closed (a bucket index; ``NO_TS`` before
#: its first reading) and the partition watermark (ms) when it last sent a reading.
CLOCK_DTYPE = np.dtype([("next_close", "i8"), ("heard", "i8")])


@dataclass(frozen=True)
class WindowSpec:
    """Window geometry. ``ring`` buckets are kept per sensor.

    The default ring, ``m + ceil(lateness/bucket) + 1``, holds a sensor's open windows:
    its own readings close its windows ``lateness`` behind its newest reading, so its
    buckets span at most ``m + ceil(lateness/bucket)``. A shorter ring closes a sensor's
    oldest windows before their lateness has passed, to make room.
    """

    bucket_ms: int
    aggregate: Aggregate = "max"
    buckets_per_window: int = 1
    lateness_ms: int = 0
    ring: int = 0

    def __post_init__(self) -> None:
        if self.bucket_ms <= 0:
            raise ValueError(f"bucket_ms must be positive, got {self.bucket_ms}")
        if self.buckets_per_window < 1:
            raise ValueError(f"buckets_per_window must be >= 1, got {self.buckets_per_window}")
        if self.lateness_ms < 0:
            raise ValueError(f"lateness_ms must be >= 0, got {self.lateness_ms}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregate {self.aggregate!r}; expected one of {AGGREGATES}")
        if self.ring and self.ring < self.buckets_per_window:
            raise ValueError(f"ring {self.ring} is shorter than the window")

    @property
    def ring_size(self) -> int:
        late_buckets = -(-self.lateness_ms // self.bucket_ms)
        return self.ring or self.buckets_per_window + late_buckets + 1

    @property
    def agg_code(self) -> int:
        return AGGREGATES.index(self.aggregate)

    @property
    def bucket_dtype(self) -> np.dtype[np.void]:
        return TEMPORAL_BUCKET if self.agg_code >= nj.TEMPORAL_FROM else SIMPLE_BUCKET

    @property
    def bytes_per_sensor(self) -> int:
        return self.ring_size * self.bucket_dtype.itemsize + CLOCK_DTYPE.itemsize


class ClosedWindows(NamedTuple):
    sensor: npt.NDArray[np.int64]
    window_end: npt.NDArray[np.int64]  # ms, exclusive end
    value: npt.NDArray[np.float64]
    n_readings: npt.NDArray[np.int64]
    span_sums: npt.NDArray[np.float64]  # (rows, len(spans)): sums over the last buckets
    #: Closed by the watermark, the window of its silent sensor's newest bucket: the
    #: sensor's next reading may reopen it, and it is then emitted again (module doc).
    provisional: npt.NDArray[np.bool_]

    def rows(self, sel: slice | npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> ClosedWindows:
        """The rows ``sel`` selects (a view for a slice)."""
        return ClosedWindows(
            self.sensor[sel], self.window_end[sel], self.value[sel], self.n_readings[sel],
            self.span_sums[sel], self.provisional[sel],
        )  # fmt: skip


def new_closed_buffer(rows: int, n_spans: int = 0) -> ClosedWindows:
    """Room for ``rows`` closed windows (a state's ``closed``; one per sensor and window
    closed at once); a state grows its own on demand."""
    return ClosedWindows(
        np.empty(rows, dtype=np.int64),
        np.empty(rows, dtype=np.int64),
        np.empty(rows, dtype=np.float64),
        np.empty(rows, dtype=np.int64),
        np.empty((rows, n_spans), dtype=np.float64),
        np.empty(rows, dtype=np.bool_),
    )


@dataclass
class WindowState:
    """The windows of one rule's sensors.

    ``record`` holds one record per sensor, its clock then its ring, so that a reading
    touches one place in memory; ``buckets`` and ``clock`` are views into it. ``closed``
    holds the windows closed since the last :func:`window_close_until` (its first
    ``pending`` rows); it is kept and grown, not reallocated per batch: at millions of
    sensors, faulting in fresh pages costs as much as computing the windows.
    """

    record: npt.NDArray[np.void]  # (n_sensors,) [("clock", CLOCK_DTYPE), ("ring", ...)]
    spans: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    #: A watermark below which no silent sensor has a window to close (ms); a lower
    #: bound, made exact by each pass of :func:`window_close_until`.
    due: npt.NDArray[np.int64] = field(default_factory=lambda: np.full(1, TS_MAX))
    closed: ClosedWindows = field(default_factory=lambda: new_closed_buffer(0, 0))
    pending: int = 0

    @property
    def buckets(self) -> npt.NDArray[np.void]:
        """(n_sensors, ring) of the bucket dtype."""
        return self.record["ring"]

    @property
    def clock(self) -> npt.NDArray[np.void]:
        """(n_sensors,) of ``CLOCK_DTYPE``."""
        return self.record["clock"]


def _new_records(
    n_sensors: int, bucket_dtype: np.dtype[np.void], ring: int
) -> npt.NDArray[np.void]:
    record = np.zeros(n_sensors, dtype=[("clock", CLOCK_DTYPE), ("ring", bucket_dtype, (ring,))])
    record["clock"]["next_close"] = NO_TS
    record["clock"]["heard"] = NO_TS
    return record


def new_window_state(n_sensors: int, spec: WindowSpec, spans: tuple[int, ...] = ()) -> WindowState:
    """Empty state: no sensor has a clock yet (each starts at its first reading)."""
    if any(not 1 <= x <= spec.buckets_per_window for x in spans) or (
        spans and spec.aggregate != "sum"
    ):
        raise ValueError(f"spans {spans} need a sum window of at least {max(spans)} buckets")
    return WindowState(
        _new_records(n_sensors, spec.bucket_dtype, spec.ring_size),
        np.array(spans, dtype=np.int64),
        closed=new_closed_buffer(0, len(spans)),
    )


def grow_window_state(state: WindowState, n_sensors: int) -> WindowState:
    """``state`` with room for ``n_sensors`` (new sensors have no clock yet)."""
    b = state.buckets
    record = _new_records(n_sensors, b.dtype, b.shape[1])
    record[: len(state.record)] = state.record
    return WindowState(record, state.spans, state.due, state.closed, state.pending)


def _ring(state: WindowState) -> tuple[npt.NDArray[np.generic], ...]:
    """The ring's fields, as :mod:`engine.evaluation.kernels.windows_njit` takes them."""
    b = state.buckets
    if b.dtype == TEMPORAL_BUCKET:
        return b["k"], b["n"], b["a"], b["b"], b["ta"], b["tb"]
    # simple buckets: the temporal fields are never touched; pass same-typed stand-ins
    return b["k"], b["n"], b["a"], b["a"], _NO_T, _NO_T


_NO_T = np.zeros((0, 0), dtype=np.int64)[:, :]


def _clock(state: WindowState) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    return state.clock["next_close"], state.clock["heard"]


def _geo(spec: WindowSpec) -> tuple[int, int, int, int, int]:
    return (spec.agg_code, spec.bucket_ms, spec.buckets_per_window, spec.ring_size,
            spec.lateness_ms)  # fmt: skip


def _reserve(state: WindowState, rows: int) -> None:
    """Room for ``rows`` more closed windows after the pending ones."""
    need = state.pending + rows
    if len(state.closed.sensor) >= need:
        return
    grown = new_closed_buffer(max(need, 2 * len(state.closed.sensor), 64), len(state.spans))
    for new, old in zip(grown, state.closed, strict=True):
        new[: state.pending] = old[: state.pending]
    state.closed = grown


def window_update(
    state: WindowState,
    spec: WindowSpec,
    sensor: npt.NDArray[np.integer],
    ts: npt.NDArray[np.int64],
    value: npt.NDArray[np.float64],
    quality: npt.NDArray[np.uint8],
    watermark_ms: int | None = None,
) -> npt.NDArray[np.uint8]:
    """Add a batch to the sensors' windows; returns a code per reading (module doc).

    ``watermark_ms``: the partition's watermark after this batch (ms), the time at which
    the batch's sensors were last heard; None: the batch's newest reading.
    """
    check_sensors(sensor, len(state.buckets), "window_update")
    n = len(ts)
    codes = np.empty(n, dtype=np.uint8)
    if n == 0:
        return codes
    wm = int(ts.max()) if watermark_ms is None else watermark_ms
    i = 0
    while i < n:
        # one reading closes at most `ring` windows: room for that many, grown on demand
        _reserve(state, spec.ring_size)
        i, state.pending = nj.update_kernel(
            _ring(state), _clock(state), state.due, _geo(spec), state.spans,
            (sensor, ts, value, quality), wm, codes, i, tuple(state.closed), state.pending,
        )  # fmt: skip
    return codes


def window_close_until(state: WindowState, spec: WindowSpec, watermark_ms: int) -> ClosedWindows:
    """Close the due windows of silent sensors (``window_end + lateness_ms <=
    watermark_ms``) and return every window closed since the last call, ordered by
    ``(window_end, sensor)``. The arrays are valid until the next update or close."""
    if watermark_ms >= min(int(state.due[0]), END_OF_INPUT):  # `due` leaves out tails
        s, due = 0, TS_MAX
        while s < len(state.buckets):
            _reserve(state, spec.ring_size)
            s, state.pending, due = nj.close_silent_kernel(
                _ring(state), _clock(state), _geo(spec), state.spans, watermark_ms, s, due,
                tuple(state.closed), state.pending,
            )  # fmt: skip
        state.due[0] = due
    j, state.pending = state.pending, 0
    out = state.closed.rows(slice(0, j))
    if j > 1 and not nj.is_ordered(out.window_end, out.sensor):
        out = out.rows(np.lexsort((out.sensor, out.window_end)))
    return out

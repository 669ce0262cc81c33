"""Many SL 651 HEX frames decoded at once by a numba kernel, into columns.

:func:`decode_many` takes frames' bytes (a list, or one buffer and ``n + 1`` offsets)
and returns a :class:`Decoded`: per frame a status (``OK``, a rejection code, or
``FALLBACK``: ``connectors.sl651.batch_kernel``, the kernel) and the header fields, and
per reading the frame index, metric, time and value. ``connectors.sl651.frame.decode``
is the reference: for every frame the readings and the rejection (reason text included)
are the ones it gives.

The kernel does the common case, uplink HEX/BCD reports (functions 30..3A and 44) in
one packet; anything else, a multi-packet (SYN) packet, ASCII mode, a downlink frame, a
configuration or status function, a BCD number of more than 14 digits (the float the
reference computes from a Python int is then not the one a 64-bit int gives), is
:data:`FALLBACK`: :meth:`Decoded.frame` decodes it with the reference, so behaviour is
unchanged. A rejected frame's reason text is the reference's too (it is rare; the code
is the kernel's, the words are computed once, on demand).

The element table stays data (``connectors.sl651.elements``): the kernel's module
compiles it into arrays indexed by lead byte (metric index, series width and value table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
import numpy.typing as npt

from connectors.decoded import CST_OFFSET_MIN, Columns, Reading, Rejection
from connectors.ingest import Reading as IngestReading
from connectors.sl651.batch_kernel import CRC, decode_kernel, tables
from connectors.sl651.frame import Frame, decode
from engine.contracts.batch import Quality

__all__ = ["Decoded", "decode_many", "warm"]


@dataclass
class Decoded:
    """Columns of a batch of frames. Per frame ``f``: ``status[f]`` and, for OK, the
    header (``station``, ``password`` as the reference writes them; ``function``,
    ``serial``, ``send_ms``; ``unmapped``: a value of an element that feeds no metric)
    and readings ``r_start[f]:r_start[f + 1]`` of the columns
    ``r_metric`` (index into ``metrics``), ``r_ts`` (ms UTC) and ``r_value`` (unit of
    the metric). ``raws`` are the frames' bytes."""

    raws: Sequence[bytes]
    offset_min: int
    metrics: tuple[str, ...]
    status: npt.NDArray[np.int8]
    #: station, centre, password, function, end char, serial, send_ms, unmapped (0/1)
    head: npt.NDArray[np.int64]
    r_start: npt.NDArray[np.int64]
    r_metric: npt.NDArray[np.int16]
    r_ts: npt.NDArray[np.int64]
    r_value: npt.NDArray[np.float64]
    _frames: dict[int, Frame | Rejection] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.status)

    def station(self, f: int) -> str:
        return f"{self.head[f, 0]:010X}"

    def password(self, f: int) -> str:
        return f"{self.head[f, 2]:04X}"

    def function(self, f: int) -> int:
        return int(self.head[f, 3])

    def serial(self, f: int) -> int:
        return int(self.head[f, 5])

    def centre(self, f: int) -> int:
        return int(self.head[f, 1])

    def end(self, f: int) -> int:
        """The end character's byte (03: ETX ...)."""
        return int(self.head[f, 4])

    def unmapped(self, f: int) -> bool:
        return bool(self.head[f, 7])

    def quality(self, f: int) -> int:
        return Quality.SUSPECT if self.head[f, 3] == 0x30 else Quality.UNCHECKED

    def frame(self, f: int) -> Frame | Rejection:
        """Frame ``f`` as the reference decodes it (for FALLBACK and rejected frames, or
        whoever needs the whole Frame): decoded once, kept."""
        got = self._frames.get(f)
        if got is None:
            got = self._frames[f] = decode(self.raws[f], self.offset_min)
        return got

    def rows(self, f: int, station: str, through: int | None = None) -> list[IngestReading]:
        """The readings of frames ``f`` to ``through`` (default ``f``; all OK, of one
        quality) as plain tuples under ``station``: what ingest takes, made in C (zip),
        not a Python loop per reading."""
        q = self.quality(f)
        a, b = int(self.r_start[f]), int(self.r_start[(f if through is None else through) + 1])
        n = b - a
        metric = map(self.metrics.__getitem__, self.r_metric[a:b].tolist())
        ts, value = self.r_ts[a:b].tolist(), self.r_value[a:b].tolist()
        return list(zip(repeat(station, n), metric, ts, value, repeat(q, n)))  # noqa: B905

    def columns(self, f: int, station: str, through: int | None = None) -> Columns:
        """The readings of frames ``f`` to ``through`` (as ``rows``) as columns (views of
        this batch's), for ``connectors.decoded.blocks``; quality must be UNCHECKED."""
        a, b = int(self.r_start[f]), int(self.r_start[(f if through is None else through) + 1])
        return Columns(station, self.metrics, self.r_metric[a:b], self.r_ts[a:b],
                       self.r_value[a:b])  # fmt: skip

    def readings(self, f: int, station: str | None = None) -> list[Reading]:
        """Frame ``f`` 's readings (of an OK frame), under ``station`` (default: its
        address), as ``Frame.readings`` gives them."""
        who = self.station(f) if station is None else station
        q = self.quality(f)
        m = self.metrics
        a, b = self.r_start[f], self.r_start[f + 1]
        return [
            Reading(who, m[k], t, v, q)
            for k, t, v in zip(
                self.r_metric[a:b].tolist(),
                self.r_ts[a:b].tolist(),
                self.r_value[a:b].tolist(),
                strict=True,
            )
        ]


def decode_many(raws: Sequence[bytes], offset_min: int = CST_OFFSET_MIN) -> Decoded:
    """Frames' bytes -> :class:`Decoded` (see the module doc). Never raises for bad
    input: a frame's problem is its status."""
    n = len(raws)
    lengths = np.fromiter(map(len, raws), np.int64, n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    buf = np.frombuffer(b"".join(raws), np.uint8)
    t = tables()
    status = np.zeros(n, np.int8)
    head = np.zeros((n, 8), np.int64)
    r_start = np.zeros(n + 1, np.int64)
    cap = len(buf)  # every reading takes at least one byte of its frame
    r_metric = np.empty(cap, np.int16)
    r_ts = np.empty(cap, np.int64)
    r_value = np.empty(cap, np.float64)
    w = decode_kernel(buf, offsets, offset_min, CRC, t.metric_of, t.series_width,
                      t.series_base, t.series_values, t.function_flags, t.mapped, status, head,
                      r_start, r_metric, r_ts, r_value)  # fmt: skip
    return Decoded(raws, offset_min, t.metrics, status, head, r_start, r_metric[:w], r_ts[:w],
                   r_value[:w])  # fmt: skip


def warm() -> None:
    """Compile the kernel (or load it from numba's cache) before taking traffic."""
    decode_many([b""])

"""Decode rate of SL 651 hourly reports on one core: Vigil's batch decoder
(``connectors.sl651.batch.decode_many``, a numba kernel into columns; also with the
columns turned into reading tuples) and its per-frame decoder (``connectors.sl651.decode``)
against a straightforward pure-Python decoder (``bench/sl651_baseline.py``), measured in
the same run, rounds interleaved.

The frames are typical hourly reports (function 34) of a river station: station
address, one observation group with the hour's twelve 5-minute rain increments (DRP)
and relative water levels (DRZ1), cumulative rain (PT), stage (Z) and battery voltage
(VT): 27 readings, 95 bytes, each frame with its own station, hour and values. Both
decoders must return the same readings before anything is timed. The batch decoder
takes the frames in batches of ``--batch`` (a linger interval's worth).

    NUMBA_CACHE_DIR=$PWD/.cache/numba .venv/bin/python bench/field_decode.py \\
        [--frames 5000] [--rounds 5] [--batch 1000] [--json bench/results/field-decode.json]

Prints frames/s and readings/s (median over rounds) of each decoder and their ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sl651_baseline import decode_baseline
from connectors.sl651 import Frame, decode
from connectors.sl651.batch import decode_many
from connectors.sl651.batch_kernel import OK
from connectors.sl651.frame import crc16


def _bcd(value: int, size: int) -> bytes:
    return bytes.fromhex(f"{value:0{2 * size}d}")


def hourly_frame(
    rng: random.Random, station: int, t: datetime, serial: int, stage: int | None = None
) -> bytes:
    """One hourly report; ``stage`` in mm (BCD, 3 decimals in m), random if None."""
    rain = bytes(rng.choice([0, 0, 1, 2, 5]) for _ in range(12))
    levels = b"".join(rng.randint(100, 400).to_bytes(2, "big") for _ in range(12))
    body = (serial.to_bytes(2, "big") + bytes.fromhex(t.strftime("%y%m%d%H%M%S"))
            + b"\xf1\xf1" + _bcd(station, 5) + b"\x48"
            + b"\xf0\xf0" + bytes.fromhex((t - timedelta(hours=1)).strftime("%y%m%d%H%M"))
            + b"\xf4\x60" + rain + b"\xf5\xc0" + levels
            + b"\x26\x19" + _bcd(rng.randint(0, 99999), 3)
            + b"\x39\x23" + _bcd(rng.randint(0, 9999999) if stage is None else stage, 4)
            + b"\x38\x12" + _bcd(rng.randint(1150, 1300), 2))  # fmt: skip
    head = b"\x7e\x7e\x01" + _bcd(station, 5) + b"\x12\x34\x34"
    frame = head + len(body).to_bytes(2, "big") + b"\x02" + body + b"\x03"
    return frame + crc16(frame).to_bytes(2, "big")


def _vigil(frames: list[bytes]) -> int:
    n = 0
    for raw in frames:
        f = decode(raw)
        assert isinstance(f, Frame)
        n += len(f.readings)
    return n


def _batch(frames: list[bytes], size: int) -> int:
    n = 0
    for i in range(0, len(frames), size):
        d = decode_many(frames[i : i + size])
        assert (d.status == OK).all()
        n += len(d.r_ts)
    return n


def _batch_tuples(frames: list[bytes], size: int) -> int:
    n = 0
    for i in range(0, len(frames), size):
        d = decode_many(frames[i : i + size])
        for f in range(len(d)):  # as the server makes them (each frame its own station)
            n += len(d.rows(f, d.station(f)))
    return n


def _baseline(frames: list[bytes]) -> int:
    return sum(len(decode_baseline(raw)) for raw in frames)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rng = random.Random(651)
    t0 = datetime(2024, 7, 1, 0, 0)
    frames = [hourly_frame(rng, 10_000 + i % 1000, t0 + timedelta(hours=i // 1000), i % 65535 + 1)
              for i in range(args.frames)]  # fmt: skip
    for raw in frames[:200]:  # the same readings, or the comparison means nothing
        f = decode(raw)
        assert isinstance(f, Frame), f
        mine = sorted((r.station, r.metric, r.ts_ms, r.value) for r in f.readings)
        assert mine == sorted(decode_baseline(raw)), (mine, sorted(decode_baseline(raw)))
    batched = decode_many(frames[:200])
    assert [batched.readings(i) for i in range(200)] == [decode(r).readings for r in frames[:200]]  # type: ignore[union-attr]
    decoders = {
        "batch": lambda fs: _batch(fs, args.batch),
        "batch+tuples": lambda fs: _batch_tuples(fs, args.batch),
        "vigil": _vigil,
        "baseline": _baseline,
    }
    runs: dict[str, list[float]] = {name: [] for name in decoders}
    readings = 0
    for _ in range(args.rounds):
        for name, fn in decoders.items():
            start = time.perf_counter()
            got = fn(frames)
            runs[name].append(time.perf_counter() - start)
            assert readings in (0, got), (name, got, readings)
            readings = got
    out: dict[str, object] = {"frames": args.frames, "rounds": args.rounds,
                              "bytes_per_frame": len(frames[0]),
                              "readings_per_frame": readings / args.frames}  # fmt: skip
    for name, secs in runs.items():
        med = statistics.median(secs)
        out[name] = {"frames_per_s": args.frames / med, "readings_per_s": readings / med,
                     "seconds": secs}  # fmt: skip
        print(f"{name:>12}: {args.frames / med:>10,.0f} frames/s  {readings / med:>12,.0f} "
              f"readings/s (median of {args.rounds})")  # fmt: skip
    base = statistics.median(runs["baseline"])
    for name in ("batch", "batch+tuples", "vigil"):
        ratio = base / statistics.median(runs[name])
        out[f"ratio_{name}"] = ratio
        print(f"{name:>12}: {ratio:.1f}x the baseline")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

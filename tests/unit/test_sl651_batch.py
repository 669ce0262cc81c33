"""The batch decoder (``connectors.sl651.batch``, a numba kernel) against the per-frame
decoder (``connectors.sl651.decode``), its reference: over the captured frames and
generated ones, the same readings, header and rejections, frame by frame, whatever else
is in the batch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.field_decode import hourly_frame
from connectors.decoded import Columns, Rejection, blocks
from connectors.sl651 import Frame, decode
from connectors.sl651.batch import decode_many
from connectors.sl651.batch_kernel import CODES, FALLBACK, OK
from connectors.sl651.body import REPORTS
from connectors.sl651.elements import ELEMENTS
from connectors.sl651.frame import END_CHARS, crc16
from connectors.sl651.server import _NOT_DATA
from tests.unit.test_field_decode_properties import mutate

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CAPTURED = [
    bytes.fromhex(r["hex"]) for r in json.loads((DATA / "sl651/sl651_frames.json").read_text())
]
#: What the reference's reason says for each kernel rejection code.
REASONS = {
    2: r"frame does not start with 7E7E",
    3: r"frame too short",
    4: r"bad direction nibble",
    5: r"expected STX \(02\) or SYN \(16\) at byte 13",
    6: r"declared length \d+, actual \d+",
    7: r"bad end character",
    8: r"CRC declared [0-9A-F]{4}, computed [0-9A-F]{4}",
    9: r"body too short",
    10: r"bad (BCD digit in )?(send|observation) time",
    11: r"element 0x\w+ must be written|station address \(F1F1\) truncated|"
    r"observation time \(F0F0\) truncated|unknown element 0xF[DE]|"
    r"element 0x\w+ has no definition byte|element 0x\w+ has length 0|"
    r"element 0x\w+ truncated",
    12: r"bad BCD digit in element 0x(?!04$)\w+$",
    13: r"bad BCD digit in element 0x04$|element 0x04 \(time step\)",
}
END_CODES = {name: code for code, name in END_CHARS.items()}
SLOW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def long_number(frame: Frame) -> bool:
    """A BCD number of more than 7 bytes (the kernel leaves those to the reference)."""
    assert frame.body is not None
    return any(
        isinstance(v.value, float) and len(v.raw) > 14 for g in frame.body.groups for v in g.values
    )


def unmapped(frame: Frame) -> bool:
    """Whether ``connectors.sl651.server`` finds a value that feeds no metric (its rule)."""
    assert frame.body is not None
    for v in (v for g in frame.body.groups for v in g.values):
        element = ELEMENTS.get(int(v.element, 16)) if len(v.element) == 2 else None
        if element is None or (element.metric is None and v.element not in _NOT_DATA):
            return True
    return False


def check(raws: list[bytes]) -> dict[int, int]:
    """Every frame of one batch against the reference; returns the status counts."""
    d = decode_many(raws)
    assert len(d) == len(raws)
    counts: dict[int, int] = {}
    for i, raw in enumerate(raws):
        ref = decode(raw)
        status = int(d.status[i])
        counts[status] = counts.get(status, 0) + 1
        if status == OK:
            assert isinstance(ref, Frame) and ref.body is not None, ref
            assert d.readings(i) == ref.readings
            assert d.rows(i, "S") == [("S", *r[1:]) for r in ref.readings]
            assert d.unmapped(i) == unmapped(ref)
            assert (d.centre(i), d.end(i)) == (ref.centre, END_CODES[ref.end])
            assert (d.station(i), d.password(i), d.function(i), d.serial(i)) == (
                ref.station,
                ref.password,
                ref.function,
                ref.body.serial,
            )
        elif status == FALLBACK:
            if isinstance(ref, Frame):
                assert (
                    ref.encoding == "ascii"
                    or ref.packet is not None
                    or ref.direction == "down"
                    or ref.function not in REPORTS
                    or long_number(ref)
                ), ref
        else:
            assert status in CODES
            assert isinstance(ref, Rejection), (status, ref)
            assert re.match(REASONS[status], ref.reason), (status, ref.reason)
        assert d.frame(i) == ref
    return counts


def test_captured_frames() -> None:
    counts = check(CAPTURED)
    assert counts[OK] >= 8 and counts[FALLBACK] >= 10 and counts[8] == 1, counts


def test_typical_hourly_reports_decode_in_the_kernel() -> None:
    import random
    from datetime import datetime, timedelta

    rng = random.Random(7)
    t0 = datetime(2024, 7, 1)
    raws = [hourly_frame(rng, 10_000 + i, t0 + timedelta(hours=i), i + 1) for i in range(200)]
    assert check(raws) == {OK: 200}
    d = decode_many(raws)
    assert len(d.r_ts) == 200 * 27


def fix(body: bytes) -> bytes:
    """Declared length and CRC made right again for whatever ``body`` (header on) is."""
    if len(body) >= 14:
        n = len(body) - 15
        body = body[:11] + (n & 0xFFFF).to_bytes(2, "big") + body[13:]
    return body + crc16(body).to_bytes(2, "big")


def bcd_ish(data: st.DataObject, n: int) -> bytes:
    """``n`` bytes, mostly BCD digits, sometimes F nibbles or anything."""
    kind = data.draw(st.sampled_from(["bcd"] * 5 + ["neg"] * 3 + ["missing", "any"]))
    if kind == "any":
        return data.draw(st.binary(min_size=n, max_size=n))
    if kind == "missing":
        return b"\xff" * n
    digits = "".join(data.draw(st.sampled_from("0123456789")) for _ in range(2 * n))
    if kind == "neg":
        digits = data.draw(st.sampled_from(["f", "ff"])) + digits[1 if n else 0 :]
        digits = digits[: 2 * n]
    return bytes.fromhex(digits)


def time_bytes(data: st.DataObject, n: int) -> bytes:
    if data.draw(st.integers(0, 19)) == 0:
        return data.draw(st.binary(min_size=n, max_size=n))
    parts = [
        data.draw(st.integers(0, 99)),
        data.draw(st.integers(1, 12 if data.draw(st.integers(0, 9)) else 13)),
        data.draw(st.integers(1, 31)),
        data.draw(st.integers(0, 23 if data.draw(st.integers(0, 9)) else 24)),
        data.draw(st.integers(0, 59)),
        data.draw(st.integers(0, 59)),
    ]
    return bytes.fromhex("".join(f"{p:02d}" for p in parts[:n]))


LEADS = [0xF4, 0xF5, 0xF6, 0x04, 0x04, 0x45, 0x39, 0x39, 0x38, 0x26, 0x20, 0x1A, 0x22, 0x58,
         0x3B, 0x01, 0x76, 0xA0, 0xFF, 0xFD, 0xF2, 0xF3]  # fmt: skip


def element(data: st.DataObject) -> bytes:
    kind = data.draw(st.sampled_from(["obs", "station", "value", "value", "value", "value"]))
    if kind == "obs":
        return b"\xf0\xf0" + time_bytes(data, 5)
    if kind == "station":
        return b"\xf1\xf1" + data.draw(st.binary(min_size=6, max_size=6))
    lead = data.draw(st.sampled_from(LEADS))
    head = bytes([lead]) + (bytes([data.draw(st.integers(0, 255))]) if lead == 0xFF else b"")
    if lead in (0xF2, 0xF3):
        return bytes([lead, lead]) + data.draw(st.binary(max_size=6))
    if lead == 0x04:
        size = data.draw(st.sampled_from([3, 3, 3, 0, 2, 4]))
    elif lead < 0xF4 or lead == 0xFF:
        size = data.draw(st.sampled_from([1, 2, 2, 3, 4, 4, 5, 7, 0, 8, 9]))
    else:
        size = data.draw(st.sampled_from([12, 24, 0, 1, 5, 25]))
    decimals = data.draw(st.integers(0, 7))
    value = (
        bcd_ish(data, size)
        if lead < 0xF4 or lead == 0xFF
        else data.draw(st.binary(min_size=size, max_size=size))
    )
    if data.draw(st.integers(0, 39)) == 0:
        value = value[: data.draw(st.integers(0, len(value)))]  # truncated
    return head + bytes([size << 3 | decimals]) + value


@st.composite
def report(draw: st.DrawFn) -> bytes:
    data = draw(st.data())
    function = draw(st.sampled_from([0x30, 0x32, 0x34, 0x37, 0x36, 0x39, 0x44, 0x2F, 0x40]))
    station = draw(st.sampled_from([b"\x00\x12\x34\x56\x78", b"\xab\xcd\x00\x00\x01"]))
    body = draw(st.integers(0, 65535)).to_bytes(2, "big") + time_bytes(data, 6)
    if draw(st.integers(0, 3)):  # most reports open with an observation time
        body += b"\xf1\xf1" + station + b"\x48" + b"\xf0\xf0" + time_bytes(data, 5)
    body += b"".join(element(data) for _ in range(draw(st.integers(0, 8))))
    direction = draw(st.sampled_from([0x0000] * 9 + [0x8000]))
    head = b"\x7e\x7e\x01" + station + b"\x12\x34" + bytes([function])
    end = draw(st.sampled_from([0x03] * 6 + [0x17, 0x1B, 0x07]))
    frame = head + (direction | len(body)).to_bytes(2, "big") + b"\x02" + body + bytes([end])
    return frame + crc16(frame).to_bytes(2, "big")


@SLOW
@given(st.lists(report(), min_size=1, max_size=20))
def test_generated_reports(raws: list[bytes]) -> None:
    check(raws)


@SLOW
@given(st.data(), st.lists(st.sampled_from(CAPTURED), min_size=1, max_size=8))
def test_mutated_captured_frames(data: st.DataObject, picks: list[bytes]) -> None:
    raws = []
    for raw in picks:
        body = mutate(data, raw[:-2])
        raws += [body + raw[-2:], fix(body)]
    check(raws)


@SLOW
@given(st.lists(st.binary(max_size=120), max_size=10))
def test_random_bytes(raws: list[bytes]) -> None:
    check(raws + [b"\x7e\x7e" + r for r in raws] + [fix(b"\x7e\x7e" + r) for r in raws])


def test_empty_batch() -> None:
    d = decode_many([])
    assert len(d) == 0 and len(d.r_ts) == 0


def test_time_step_negative_and_missing_values() -> None:
    """A 10-minute step (04) for the series, a minus sign as FF and as an F nibble, an
    all-F (missing) value and an invalid series value: what the kernel makes of each."""
    body = (b"\x00\x07" + bytes.fromhex("240701081500") + b"\xf1\xf1\x00\x12\x34\x56\x78\x48"
            + b"\xf0\xf0" + bytes.fromhex("2407010800")
            + b"\x04\x18" + bytes.fromhex("000010")
            + b"\xf5\x30" + bytes.fromhex("0064FFFF00C8")  # 1.00 m, invalid, 2.00 m
            + b"\x39\x23" + bytes.fromhex("FF000123")  # -0.123 m
            + b"\x3a\x23" + bytes.fromhex("F0001234")  # -1.234 m
            + b"\x38\x12" + bytes.fromhex("FFFF"))  # fmt: skip
    head = b"\x7e\x7e\x01\x00\x12\x34\x56\x78\x12\x34\x32"
    raw = fix(head + len(body).to_bytes(2, "big") + b"\x02" + body + b"\x03")
    assert check([raw]) == {OK: 1}
    t0 = 1_719_792_000_000  # 2024-07-01 08:00 China Standard Time
    assert [(r.metric, r.ts_ms, r.value) for r in decode_many([raw]).readings(0)] == [
        ("water_level_relative", t0, 1.0),
        ("water_level_relative", t0 + 1_200_000, 2.0),
        ("water_level", t0, -0.123),
        ("tailwater_level", t0, -1.234),
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["G1", "G2", "SK01"]),
            st.sampled_from([("a", "b", "c"), ("x", "a")]),
            st.lists(st.tuples(st.integers(0, 1), st.integers(0, 10**13), st.floats()), max_size=8),
        ),
        max_size=12,
    )
)
def test_blocks_are_the_columns_per_sensor_in_order(
    runs: list[tuple[str, tuple[str, ...], list[tuple[int, int, float]]]],
) -> None:
    """``connectors.decoded.blocks``: one block per station and metric, holding exactly
    that sensor's readings of all the columns, in the order they came."""
    columns = [
        Columns(
            station,
            metrics,
            np.array([k for k, _, _ in rows], np.int16),
            np.array([t for _, t, _ in rows], np.int64),
            np.array([v for _, _, v in rows], np.float64),
        )
        for station, metrics, rows in runs
    ]
    want: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for station, metrics, rows in runs:
        for k, t, v in rows:
            want.setdefault((station, metrics[k]), []).append((t, v))
    got = blocks(columns)
    assert len({(b.station, b.metric) for b in got}) == len(got)
    as_dict = {(b.station, b.metric): list(zip(b.ts, b.value, strict=True)) for b in got}
    assert as_dict.keys() == want.keys()
    for key, readings in want.items():  # repr: NaN == NaN
        assert repr(as_dict[key]) == repr(readings)

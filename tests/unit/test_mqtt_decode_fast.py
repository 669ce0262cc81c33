"""The numba parser of the usual MQTT payload (``connectors.mqtt.decode_fast``) against
the reference decoder (``decode_payload``): what it takes, it takes with the same
readings to the bit (the sign of a zero included); what it refuses, ``decode_columns``
answers as the reference does (readings, ``seq`` numbers, reasons). Then the columns it
hands on as arrays: the same telemetry batches as the plain lists, and the same readings,
dead letters and reasons through the MQTT ingest's ``deliver`` as with the parser off."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.ingest import Inbound, PayloadError, Times, Values, deliver
from connectors.mqtt import payload as payload_module
from connectors.mqtt.client import MqttIngest
from connectors.mqtt.decode_fast import MAX_TS_MS, MIN_TS_MS, parse_readings
from connectors.mqtt.options import MqttOptions
from connectors.mqtt.payload import decode_columns, decode_payload
from engine.contracts.batch import ReadingBlock
from engine.runtime.batching import StationPartitions, batches_by_partition

NOW = 1_719_763_200_000


def _exact(values: list[float]) -> list[str]:
    """Floats compared to the bit: ``0.0`` and ``-0.0`` differ, as NaNs would."""
    return [float.hex(float(v)) for v in values]


def _reference(payload: bytes) -> tuple[list[int], list[str], list[int]] | str:
    seqs: list[int] = []
    try:
        readings = decode_payload(payload, NOW, seqs)
    except PayloadError as exc:
        return f"PayloadError: {exc}"
    return [t for t, _ in readings], _exact([v for _, v in readings]), seqs


def _columns(payload: bytes) -> tuple[list[int], list[str], list[int]] | str:
    seqs: list[int] = []
    try:
        ts, values = decode_columns(payload, NOW, seqs)
    except PayloadError as exc:
        return f"PayloadError: {exc}"
    return list(ts), _exact(values), seqs


def _kernel(payload: bytes) -> tuple[list[int], list[str], list[int]] | None:
    got = parse_readings(payload, NOW)
    if got is None:
        return None
    ts, values, lo, hi = got
    assert (lo, hi) == (min(ts.tolist()), max(ts.tolist()))
    return ts.tolist(), _exact(values.tolist()), []


def _check(payload: bytes) -> bool:
    """``payload`` decoded by the kernel (when it takes it) and by ``decode_columns``
    exactly as by the reference; whether the kernel took it."""
    expected = _reference(payload)
    kernel = _kernel(payload)
    if kernel is not None:
        assert kernel == expected, payload
    assert _columns(payload) == expected, payload
    return kernel is not None


USUAL = [
    b'{"value": 3.21, "ts": 1719763200000}',
    b'{"ts": 1719763200000, "value": 3.21}',
    b'{"value": 3.21}',
    b'{"value":-0.5,"ts":1719763200001}',
    b' \t\r\n{ "value" : 7 , "ts" : 1719763200000 } \n',
    b'[{"value": 1.0, "ts": 1719763200000}, {"value": 2.5e-3, "ts": 1719763199999}]',
    b'[{"value": 1E2}, {"value": 123456789012345, "ts": 1719763200000}, {"value": 0.0}]',
    b'[ {"value": -0.0} ,{"value": -0} ,{"value": 1.5E+22} , {"value": 9.99e-20} ]',
    b'[{"value": 0e9999}, {"value": 123.456, "ts": -62135596800000}]',
    b'[{"value": 4, "ts": 253402300799999}]',
]


@pytest.mark.parametrize("payload", USUAL)
def test_the_usual_payloads_are_parsed_by_the_kernel_exactly(payload: bytes) -> None:
    """The forms devices send are taken by the kernel (not handed on to msgspec), with
    the reference's readings to the bit, and come out of ``decode_columns`` as lists
    that carry their arrays (what the partitioning joins)."""
    assert _check(payload)
    ts, values = decode_columns(payload, NOW)
    assert isinstance(ts, Times) and isinstance(values, Values)
    assert ts.array is not None and ts.array.tolist() == list(ts)
    assert _exact(values.array.tolist()) == _exact(values)
    assert (ts.lo, ts.hi) == (min(ts), max(ts))


REFUSED = [
    b"",
    b"   ",
    b"[]",
    b"{}",
    b"[{}]",
    b'{"value": 1,}',
    b'[{"value": 1},]',
    b'[{"value": 1}{"value": 2}]',
    b'{"value": 01}',
    b'{"value": 1.}',
    b'{"value": .5}',
    b'{"value": +1}',
    b'{"value": 1e}',
    b'{"value": 1e+}',
    b'{"value": -}',
    b'{"value": 1e23}',  # beyond 10**22: exact only by the general path
    b'{"value": 1e-23}',
    b'{"value": 9007199254740993}',  # past 2**53: rounded by float(int)
    b'{"value": 1234567890123456789}',
    b'{"value": 0.12345678901234567}',
    b'{"value": 1, "ts": 1.5}',
    b'{"value": 1, "ts": 1e12}',
    b'{"value": 1, "ts": null}',
    b'{"value": 1, "ts": "2024-06-30T16:00:00+00:00"}',
    b'{"value": 1, "ts": 253402300800000}',
    b'{"value": 1, "ts": -62135596800001}',
    b'{"value": 1, "ts": 1234567890123456789}',
    b'{"value": 1, "value": 2}',
    b'{"value": 1, "ts": 1, "ts": 2}',
    b'{"value": 1, "seq": 3}',
    b'{"value": 1, "unit": "m"}',
    b'{"v\\u0061lue": 1}',
    b'{"value": null}',
    b'{"value": true}',
    b'{"value": "1"}',
    b'{"value": [1]}',
    b'{"value": NaN}',
    b'{"value": Infinity}',
    b'{"ts": 1719763200000}',
    b'{"value": 1} x',
    b'{"value": 1}}',
    b'[{"value": 1}]]',
    b"\xef\xbb\xbf" + b'{"value": 1}',  # a byte order mark: the reference allows it
    b'{"value": 1, "note": "\xc3\xa9"}',
    b"3.5",
    b"[3.5]",
    b'[[{"value": 1}]]',
    b'{"value" 1}',
    b"{value: 1}",
    b'{"value": 1',
    b'[{"value": 1}',
]


@pytest.mark.parametrize("payload", REFUSED)
def test_what_the_kernel_refuses_is_answered_as_the_reference_answers(payload: bytes) -> None:
    """Grammar the kernel leaves to the general path (and malformed JSON): refused by
    it, and ``decode_columns`` then gives the reference's readings or reason."""
    assert not _check(payload)


@pytest.mark.parametrize("payload", USUAL)
def test_every_prefix_and_every_byte_changed(payload: bytes) -> None:
    """Each prefix of a usual payload, and the payload with any one byte replaced by a
    byte that matters to the grammar: the kernel is right or refuses."""
    for end in range(len(payload)):
        _check(payload[:end])
    for i in range(len(payload)):
        for b in b' ,:{}[]"-+.0159eEx\x00\xff':
            _check(payload[:i] + bytes([b]) + payload[i + 1 :])


_digits = st.text("0123456789", min_size=1, max_size=20)
_number = st.builds(
    lambda sign, whole, frac, exp: sign + whole + frac + exp,
    st.sampled_from(["", "-", "+"]),
    st.one_of(_digits, st.just("0")),
    st.one_of(st.just(""), _digits.map(lambda d: "." + d), st.just(".")),
    st.one_of(
        st.just(""),
        st.builds(
            lambda e, s, d: e + s + d,
            st.sampled_from("eE"),
            st.sampled_from(["", "+", "-"]),
            st.text("0123456789", min_size=0, max_size=5),
        ),
    ),
)
_json_number = st.one_of(
    _number,
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.6g}"),
    st.integers(-(2**64), 2**64).map(str),
    st.integers(MIN_TS_MS - 2, MAX_TS_MS + 2).map(str),
)
_space = st.sampled_from(["", " ", "\n", "\t ", "\r\n  "])
_member = st.one_of(
    st.tuples(st.sampled_from(['"value"', '"ts"']), _json_number),
    st.tuples(
        st.sampled_from(['"seq"', '"unit"', '"ts"', '"value"']),
        st.sampled_from(["null", "true", '"x"', "1", "[]"]),
    ),
)


@st.composite
def _objects(draw: st.DrawFn) -> str:
    members = draw(st.lists(_member, min_size=0, max_size=3))
    if draw(st.booleans()):  # mostly a value, so that most objects are readings
        members.insert(draw(st.integers(0, len(members))), ('"value"', draw(_json_number)))
    ws = draw(_space)
    return "{" + ws + f"{ws},{ws}".join(f"{k}{ws}:{ws}{v}" for k, v in members) + ws + "}"


_documents = st.one_of(
    _objects(),
    st.tuples(st.lists(_objects(), max_size=5), _space).map(
        lambda ows: "[" + ows[1] + f"{ows[1]},{ows[1]}".join(ows[0]) + ows[1] + "]"
    ),
)


@settings(max_examples=1500)
@given(_documents)
def test_the_kernel_against_the_reference(document: str) -> None:
    """Numbers of any spelling (signs, leading zeros, fractions, exponents, 20 digits),
    keys in any order, repeated or unknown, members of other types, any JSON
    whitespace."""
    _check(document.encode())


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.floats(allow_nan=False, allow_infinity=False, width=32),
            st.one_of(st.none(), st.integers(NOW - 10**9, NOW + 10**9)),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_what_devices_send_is_taken_by_the_kernel(readings: list[tuple[float, int | None]]) -> None:
    """JSON as devices' libraries write it (``json.dumps`` of floats of a 32-bit sensor
    value, with or without ``ts``) is taken whole by the kernel, to the bit."""
    items = [{"value": v} | ({} if t is None else {"ts": t}) for v, t in readings]
    payload = json.dumps(items).encode()
    took = _check(payload)
    # Fifteen significant digits or fewer, no exponent: within the kernel's exact range.
    digits = [repr(v).replace("-", "").replace(".", "").lstrip("0") for v, _ in readings]
    if all(len(d) <= 15 and "e" not in d for d in digits):
        assert took


def _blocks(payloads: list[bytes]) -> list[ReadingBlock]:
    """A block per payload ``decode_columns`` takes, of stations and metrics in turn."""
    out = []
    for i, p in enumerate(payloads):
        try:
            ts, values = decode_columns(p, NOW)
        except PayloadError:
            continue
        out.append(ReadingBlock(f"S{i % 7}", "level" if i % 3 else "rain", ts, values))
    return out


@settings(max_examples=200)
@given(st.lists(st.sampled_from(USUAL + REFUSED[-12:] + [b'{"value": 2, "seq": 1}']), max_size=12))
def test_blocks_with_arrays_make_the_batches_plain_lists_make(payloads: list[bytes]) -> None:
    """``batches_by_partition`` of blocks whose columns carry arrays (joined) and of
    the same blocks as plain lists (chained): the same batches, to the byte; blocks of
    both kinds mixed too."""
    blocks = _blocks(payloads)
    plain = [ReadingBlock(b.station, b.metric, list(b.ts), list(b.value)) for b in blocks]
    partition_of = StationPartitions(4)

    def encoded(readings: list[ReadingBlock]) -> dict[int, bytes]:
        return {p: b.encode() for p, b in batches_by_partition(readings, partition_of).items()}

    assert encoded(blocks) == encoded(plain)
    mixed = [b if i % 2 else plain[i] for i, b in enumerate(blocks)]
    assert encoded(mixed) == encoded(plain)


def test_blocks_of_arrays_are_joined_in_order() -> None:
    """Two stations interleaved over several partitions: each reading stays with its
    sensor and in the order given (the arrays joined, not the lists chained)."""
    payloads = [
        b'[{"value": %d.5, "ts": %d}, {"value": %d.25}]' % (i, NOW - i, i) for i in range(10)
    ]
    blocks = _blocks(payloads)
    assert all(isinstance(b.ts, Times) and b.ts.array is not None for b in blocks)
    batches = batches_by_partition(blocks, StationPartitions(3))
    got: dict[str, list[tuple[int, float]]] = {}
    for b in batches.values():
        for s, t, v in zip(b.station_idx.tolist(), b.ts.tolist(), b.value.tolist(), strict=True):
            got.setdefault(b.stations[s], []).append((t, v))
    want: dict[str, list[tuple[int, float]]] = {}
    for b in blocks:
        want.setdefault(b.station, []).extend(zip(b.ts, b.value, strict=True))
    assert got == want


MESSAGES = [
    ("vigil/B000/water_level", b'[{"value": 1.25, "ts": 1719763200000}, {"value": -0.0}]'),
    ("vigil/B001/water_level", b'{"value": 3, "ts": 1719763200001}'),
    ("vigil/B000/water_level", b'[{"value": 1, "seq": 5}, {"value": 2, "seq": 6}]'),
    ("vigil/B000/water_level", b'{"value": 1, "ts": 5}'),  # before 2000: admission
    ("vigil/B000/water_level", b'{"value": 1, "ts": 9719763200000}'),  # years ahead
    ("vigil/B002/water_level", b'{"value": 1}'),  # an unknown station
    ("vigil/B001/rain", b'{"value": 1}'),  # a metric it does not report
    ("vigil/B001/water_level", b'{"value": 01}'),
    ("vigil/B001/water_level", b'{"value": 1e400}'),
    ("vigil/B001/water_level", b"[]"),
    ("vigil/B001/water_level", b'{"value": 1, "ts": "2024-06-30T16:00:00+08:00"}'),
    ("vigil/B000/water_level", b'[{"value": 7.5E-3}, {"value": 12345.678, "ts": 1719763100000}]'),
    ("vigil/B000/water_level/extra", b'{"value": 1}'),
]


def _deliver(messages: list[tuple[str, bytes]]) -> tuple[Any, ...]:
    """``deliver`` of ``messages`` through ``MqttIngest._decode``: the blocks produced
    (exact), the dead letters with their reasons, the ``seq`` numbers seen and the
    batches' bytes."""
    produced: list[ReadingBlock] = []
    dead: list[tuple[bytes, str, str]] = []
    seqs: list[tuple[str, list[int]]] = []

    async def produce(readings: list[Any]) -> None:
        produced.extend(readings)

    async def dead_letter(raw: bytes, reason: str, source: str) -> None:
        dead.append((raw, reason, source))

    stations = {"B000": ["water_level"], "B001": ["water_level"]}
    ingest = MqttIngest(
        MqttOptions(),
        produce,
        dead_letter,
        known_stations=stations,
        on_sequence=lambda topic, s, _: seqs.append((topic, s)),
    )
    batch = [Inbound(topic, p, NOW, None) for topic, p in messages]
    asyncio.run(deliver(batch, ingest._decode, produce, dead_letter, Counter()))
    blocks = [(b.station, b.metric, list(b.ts), _exact(b.value)) for b in produced]
    encoded = {
        p: b.encode() for p, b in batches_by_partition(produced, StationPartitions(2)).items()
    }
    return blocks, dead, seqs, encoded


#: Only what the kernel takes: every block carries its arrays, which the batches join
#: (the years 1 and 9999 then refused by the admission, as on the plain path).
USUAL_MESSAGES = [(f"vigil/B00{i % 2}/water_level", p) for i, p in enumerate(USUAL)]


@pytest.mark.parametrize(
    ("messages", "readings", "dead_letters"),
    [(MESSAGES, 5, 8), (USUAL_MESSAGES, 8, 2)],
    ids=["mixed", "usual"],
)
def test_deliver_gives_what_the_plain_path_gives(
    monkeypatch: pytest.MonkeyPatch,
    messages: list[tuple[str, bytes]],
    readings: int,
    dead_letters: int,
) -> None:
    """The MQTT ingest's batch with the kernel and with it off (msgspec and the
    reference only): the same readings, dead letters with the same reasons, ``seq``
    numbers and batches."""
    fast = _deliver(messages)
    monkeypatch.setattr(payload_module, "parse_readings", lambda payload, received_ms: None)
    plain = _deliver(messages)
    assert fast == plain
    blocks, dead, _, _ = fast
    assert len(blocks) == readings and len(dead) == dead_letters


def test_columns_are_exact_for_integers_near_two_to_the_53() -> None:
    """The last integers the kernel takes as values, and the first it leaves: each the
    double ``float(int)`` gives."""
    for n in (2**53 - 1, 2**53, 2**53 + 1, -(2**53) + 1):
        payload = b'{"value": %d}' % n
        _check(payload)
        _, values = decode_columns(payload, NOW)
        assert values == [float(n)] and not math.isnan(values[0])
    assert np.array_equal(parse_readings(b'{"value": 9007199254740991}', NOW)[1], [2.0**53 - 1])  # type: ignore[index]

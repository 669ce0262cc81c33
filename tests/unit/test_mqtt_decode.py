from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.ingest import EARLIEST_TS_MS, Admission, PayloadError, Times
from connectors.mqtt.payload import MAX_TS_MS, decode_columns, decode_payload
from connectors.mqtt.topics import TopicTemplate
from engine.contracts.dead_letters import reason_class

NOW = 1_700_000_000_000


def test_template_round_trip_and_subscription() -> None:
    t = TopicTemplate("site/{station}/sensors/{metric}")
    assert t.subscription == "site/+/sensors/+/#"  # extra levels arrive, to be dead-lettered
    assert t.parse(t.topic("HZ001", "water_level")) == ("HZ001", "water_level")


def test_template_rejects_topic_outside_it() -> None:
    with pytest.raises(PayloadError, match="does not match template"):
        TopicTemplate("vigil/{station}/{metric}").parse("other/HZ001/water_level")


def test_template_needs_both_fields() -> None:
    with pytest.raises(ValueError, match=re.escape("must contain {station} and {metric}")):
        TopicTemplate("vigil/{station}")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"value": 3.2, "ts": 1700000000123}', [(1700000000123, 3.2)]),
        (b'{"value": 3, "ts": "2023-11-14T22:13:20+00:00"}', [(1700000000000, 3.0)]),
        (b'{"value": 1.5}', [(NOW, 1.5)]),
        (b'[{"value": 1, "ts": 1}, {"value": 2, "ts": 2}]', [(1, 1.0), (2, 2.0)]),
    ],
)
def test_decodes_readings(payload: bytes, expected: list[tuple[int, float]]) -> None:
    assert decode_payload(payload, NOW) == expected


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "payload is not UTF-8"),
        (b"{", "payload is not JSON"),
        (b"[]", "payload is an empty list"),
        (b"3.5", "expected an object with 'value', got float"),
        (b'{"ts": 1}', "object has no 'value'"),
        (b'{"value": true}', "value must be a number, got True"),
        (b'{"value": "3.1"}', "value must be a number, got '3.1'"),
        (b'{"value": NaN}', "value must be finite, got nan"),
        (b'{"value": 1, "ts": "yesterday"}', "ts 'yesterday' is not ISO 8601"),
        (b'{"value": 1, "ts": "2023-11-14T22:13:20"}', "has no UTC offset"),
        (b'{"value": 1, "ts": [1]}', "ts must be epoch ms or ISO 8601, got list"),
    ],
)
def test_rejects_with_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(reason)):
        decode_payload(payload, NOW)


# ---- poison messages: each is a PayloadError with its reason, never another exception ----

HUGE_INT = b"9" * 401
SHOWN = "999999999999999999...9999999999999999999"  # reprlib: a reason stays a line

POISON = {
    "value-401-digits": (
        b'{"value": ' + HUGE_INT + b', "ts": 1}',
        f"value {SHOWN} is out of range for a float",
    ),
    "ts-1e300": (
        b'{"value": 1, "ts": 1e300}',
        "ts 1e+300 is out of range (epoch ms of the years 1 to 9999)",
    ),
    "ts-401-digits": (b'{"value": 1, "ts": ' + HUGE_INT + b"}", f"ts {SHOWN} is out of range"),
    "ts-minus-1e300": (b'{"value": 1, "ts": -1e300}', "ts -1e+300 is out of range"),
    "ts-before-year-1": (b'{"value": 1, "ts": "0001-01-01T00:00:00+14:00"}', "is out of range"),
    "nested-100k": (
        b"[" * 100_000 + b"]" * 100_000,
        "payload is not JSON this decoder can read: nested too deeply",
    ),
    "int-5000-digits": (
        b'{"value": ' + b"9" * 5000 + b"}",
        "payload is not JSON: Exceeds the limit",
    ),
    "not-utf8": (b"\xff\xfe\xfd", "payload is not UTF-8"),  # was a 'utf-16-le' codec error
    "utf8-broken-in-a-string": (b'{"value": 1, "note": "\xc3\x28"}', "payload is not UTF-8"),
    "value-nested-list": (
        b'{"value": ' + b"[" * 500 + b"]" * 500 + b"}",
        "value must be a number, got [[[[[[[...]]]]]]]",
    ),
}


@pytest.mark.parametrize(("payload", "reason"), POISON.values(), ids=POISON.keys())
def test_poison_payloads_are_payload_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode_payload(payload, NOW)
    assert reason in str(info.value)
    assert reason_class(str(info.value)) != "other"  # counted under a class people read
    assert len(str(info.value)) < 200  # a reason is a line, not the payload again


def test_a_utf8_byte_order_mark_is_ignored_by_both_decoders() -> None:
    payload = b'\xef\xbb\xbf{"value": 1.5, "ts": 1719763200000}'
    assert decode_payload(payload, NOW) == [(1719763200000, 1.5)]
    assert decode_columns(payload, NOW) == ([1719763200000], [1.5])


def test_ts_at_the_bounds_is_accepted() -> None:
    assert decode_payload(b'{"value": 1, "ts": 253402300799999}', NOW) == [(253402300799999, 1.0)]
    assert decode_payload(b'{"value": 1, "ts": "9999-12-31T23:59:59+00:00"}', NOW) == [
        (253402300799000, 1.0)
    ]


def _outcome(decode: Callable[[bytes, int], object], payload: bytes) -> object:
    try:
        return decode(payload, NOW)
    except PayloadError as exc:
        return f"PayloadError: {exc}"


_numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=0, max_value=MAX_TS_MS + 10),
)
_anything = st.one_of(st.none(), st.booleans(), st.text(max_size=5), _numbers)
_ts = st.one_of(
    _anything,
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),  # no offset: refused
)
_seq = st.one_of(st.integers(0, 10), st.integers(-3, 2**64 + 3), _anything)
_item = st.one_of(
    st.fixed_dictionaries(
        {"value": _anything},
        optional={"ts": _ts, "seq": _seq, "unit": st.text(max_size=3)},
    ),
    st.fixed_dictionaries({"ts": _ts}),  # no value
    _anything,  # not an object
)
_payloads = st.one_of(
    _item.map(lambda i: json.dumps(i).encode()),
    st.lists(_item, max_size=6).map(lambda i: json.dumps(i).encode()),
    st.binary(max_size=40),
)


@settings(max_examples=600)
@given(_payloads)
def test_the_fast_decoder_takes_and_refuses_what_the_reference_does(payload: bytes) -> None:
    """decode_columns (msgspec, what ingest runs) against decode_payload (the reference):
    the same readings as columns and the same ``seq`` numbers, or the same PayloadError
    reason (and no numbers)."""
    ref_seqs: list[int] = []
    fast_seqs: list[int] = []
    expected = _outcome(lambda p, now: decode_payload(p, now, ref_seqs), payload)
    if isinstance(expected, list):
        expected = ([ts for ts, _ in expected], [value for _, value in expected])
    assert _outcome(lambda p, now: decode_columns(p, now, fast_seqs), payload) == expected
    assert fast_seqs == ref_seqs


@pytest.mark.parametrize(
    "payload",
    [
        b'{"value": ' + b"9" * 401 + b', "ts": 1719763200000}',
        b'{"value": 1.0, "ts": 1e300}',
        b"[" * 100_000 + b"]" * 100_000,
        b'[{"value": 1, "ts": 1}, ' + b"[" * 100_000 + b"]" * 100_000 + b"]",
        b'{"value": 1, "ts": ' + b"9" * 5000 + b"}",
        # Invalid UTF-8 in a field msgspec skips (it took the reading, the reference not).
        b'{"value": 1.0, "ts": 1719763200000, "note": "\xc3\x28"}',
        b'[{"value": 1.0, "ts": 1719763200000, "\xff": 1}]',
        # Nesting deeper than msgspec follows, inside a reading (a RecursionError).
        b'{"value": 1.0, "x": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"a": ' * 10_000 + b"1" + b"}" * 10_000,
    ],
)
def test_poison_payloads_are_payload_errors_for_the_fast_decoder_too(payload: bytes) -> None:
    expected = _outcome(decode_payload, payload)
    assert isinstance(expected, str) and expected.startswith("PayloadError")
    assert _outcome(decode_columns, payload) == expected


@pytest.mark.parametrize(
    "payload",
    [
        b'[{"value": 1.5}]',  # a lone reading without ts, in a list
        b'[{"value": 1.5, "ts": 1719763200000}, {"value": 2.5}]',
        b'[{"value": 2.5}, {"value": 1.5, "ts": 1719763200000}, {"value": 0}]',
        b'[{"value": 1, "ts": null}]',
        b'[{"value": 1, "ts": 1719763200000, "seq": 7}, {"value": 2, "seq": 8}, {"value": 3}]',
        b'[{"value": 1, "s\\u0065q": 5}, {"value": 2, "seq": 6}]',  # an escaped key
        b'[{"value": 1, "\\u0073eq": 5}]',
        b'[{"value": 1, "t\\u0073": 1719763200000}, {"value": 2, "ts": 1719763200001}]',
        b'[{"value": 1, "note": "seq"}, {"value": 2, "seq": -1}]',
        b'[{"value": 1, "seq": 18446744073709551616}]',
        b'[{"value": 1e308}, {"value": 1e308, "ts": 1719763200000}]',  # the sum overflows
        b'[{"value": NaN}, {"value": 1}]',
        b'[{"value": 1}, {"value": -Infinity}]',
        b'[{"value": 1, "ts": -62135596800001}, {"value": 2}]',
        b'[{"value": 1}, {"value": 2, "ts": 253402300800000}]',
        b'[{"value": "1"}, {"value": 2}]',
        b'[{"value": 1}, {"value": true}]',
        b'[{"value": 1}, {"ts": 1719763200000}]',
        b"[{}, 1]",
        b"[]",
    ],
)
def test_the_fast_decoder_on_lists_of_readings(payload: bytes) -> None:
    """Lists with a ts absent from some readings (or all), ``seq`` present in some or
    spelt with an escape, NaN, infinities, overflowing sums, values and times of the
    wrong type or out of range: what ``decode_columns`` checks on columns, against the
    reference."""
    ref_seqs: list[int] = []
    fast_seqs: list[int] = []
    expected = _outcome(lambda p, now: decode_payload(p, now, ref_seqs), payload)
    if isinstance(expected, list):
        expected = ([ts for ts, _ in expected], [value for _, value in expected])
    assert _outcome(lambda p, now: decode_columns(p, now, fast_seqs), payload) == expected
    assert fast_seqs == ref_seqs


def _escaped(key: str, escape: bool) -> str:
    """``key`` as a JSON string, its letters written as ``\\u`` escapes when ``escape``."""
    return '"' + ("".join(f"\\u{ord(c):04x}" for c in key) if escape else key) + '"'


_spelt_item = st.fixed_dictionaries(
    {"value": st.one_of(st.integers(-5, 5), st.floats(allow_nan=False, width=32))},
    optional={
        "ts": st.one_of(st.none(), st.integers(MAX_TS_MS - 5, MAX_TS_MS + 5), st.just(NOW)),
        "seq": st.integers(-1, 3),
    },
).flatmap(lambda item: st.tuples(st.just(item), st.lists(st.booleans(), min_size=3, max_size=3)))


@settings(max_examples=300)
@given(st.lists(_spelt_item, min_size=1, max_size=5), st.sampled_from(["", " ", "\n\t "]))
def test_the_fast_decoder_with_keys_escaped_or_not(
    items: list[tuple[dict[str, object], list[bool]]], ws: str
) -> None:
    """Lists of readings whose keys are written plainly or with ``\\u`` escapes (one
    name, two spellings), some with ``ts`` or ``seq`` and some without: the same
    readings and ``seq`` numbers as the reference, or the same reason."""
    objects = []
    for item, escapes in items:
        members = [
            f"{_escaped(k, escapes[i])}:{ws}{json.dumps(v)}"
            for i, (k, v) in enumerate(item.items())
        ]
        objects.append("{" + f",{ws}".join(members) + "}")
    payload = ("[" + f",{ws}".join(objects) + "]").encode()
    ref_seqs: list[int] = []
    fast_seqs: list[int] = []
    expected = _outcome(lambda p, now: decode_payload(p, now, ref_seqs), payload)
    if isinstance(expected, list):
        expected = ([ts for ts, _ in expected], [value for _, value in expected])
    assert _outcome(lambda p, now: decode_columns(p, now, fast_seqs), payload) == expected
    assert fast_seqs == ref_seqs


def _admitted(admission: Admission, ts: list[int]) -> str | None:
    try:
        admission.check_times(ts, NOW)
    except PayloadError as exc:
        return str(exc)
    return None


@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(
            st.none(),  # absent: the time received, NOW
            st.integers(EARLIEST_TS_MS - 3, EARLIEST_TS_MS + 3),
            st.integers(NOW - 10, NOW + 10),
            st.integers(NOW + 86_400_000 - 3, NOW + 86_400_000 + 3),
        ),
        min_size=2,
        max_size=8,
    )
)
def test_a_decoded_ts_column_is_admitted_as_the_plain_list_would_be(
    stamps: list[int | None],
) -> None:
    """``decode_columns`` hands the times of a list of readings with their min and max
    (``Times``): the admission's clock check takes or refuses them, with the reason,
    exactly as it does the same times as a plain list (``min``/``max`` of it)."""
    payload = json.dumps([{"value": 1.0} | ({} if t is None else {"ts": t}) for t in stamps])
    ts, _ = decode_columns(payload.encode(), NOW)
    assert isinstance(ts, Times)
    admission = Admission()
    assert _admitted(admission, ts) == _admitted(admission, list(ts))

"""NB-IoT decoding: product profiles, SenML, seals and counters, the platforms' bodies;
and hypothesis-fuzzed datagrams and push bodies that never stop the stream."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from pathlib import Path

import aiocoap
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.ingest import PayloadError, Reading, deliver
from connectors.nbiot.coap import _code as coap_code
from connectors.nbiot.platforms import onenet_signature, raw_member
from connectors.nbiot.products import load_products
from connectors.nbiot.seal import AuthError, Counters, seal
from connectors.nbiot.senml import decode_pack
from connectors.nbiot.unknown import UnknownDevices
from connectors.nbiot.uplink import Decoder, NotAdmitted, Uplink
from engine.contracts.dead_letters import reason_class
from engine.contracts.devices import Device
from simulators.nbiot_fleet import ctwing_body, datagram, encode, onenet_body

KEY = bytes(range(16))
NOW = 1_800_000_000_000
DEVICES = {
    "861000000000001": Device(
        "861000000000001", "HZ003", "waterlog-v1", KEY, {"water_depth": "water_level"}
    ),
    "861000000000002": Device("861000000000002", "HZ001", "manhole-v1"),
    "861000000000003": Device("861000000000003", "HZ002", "senml"),
}


class Lookup:
    def lookup(self, identity: str) -> Device | None:
        return DEVICES.get(identity)


@pytest.fixture
def decoder(tmp_path: Path) -> Decoder:
    return Decoder(Lookup(), load_products(), Counters(tmp_path / "c"), UnknownDevices(3), "tok")


def up(path: str, payload: bytes, identity: str | None = None, fmt: int | None = None) -> Uplink:
    return Uplink("t", payload, NOW, None, path=path, identity=identity, content_format=fmt)


def test_binary_backlog_little_endian_and_scales() -> None:
    manhole = load_products().get("manhole-v1")
    rows = [(1_700_000_000, {"cover_open": 1, "tilt_deg": -12.5, "battery_v": 3.456}),
            (1_700_000_300, {"cover_open": 0, "tilt_deg": 0.0, "battery_v": 3.455})]  # fmt: skip
    payload = encode(manhole, rows)
    assert payload[:4] == (1_700_000_000).to_bytes(4, "little")
    got = manhole.decode_binary(payload)
    assert [(m, t, round(v, 3)) for m, t, v in got] == [
        ("cover_open", 1_700_000_000_000, 1.0), ("tilt_deg", 1_700_000_000_000, -12.5),
        ("battery_v", 1_700_000_000_000, 3.456), ("cover_open", 1_700_000_300_000, 0.0),
        ("tilt_deg", 1_700_000_300_000, 0.0), ("battery_v", 1_700_000_300_000, 3.455),
    ]  # fmt: skip


def test_binary_without_time_takes_one_record() -> None:
    rain = load_products().get("raingauge-v1")
    assert rain.decode_binary(bytes([0, 15, 0x0D, 0xDE])) == [
        ("rainfall", None, 1.5), ("battery_v", None, pytest.approx(3.55))]  # fmt: skip
    with pytest.raises(PayloadError, match="2 records but no time field to date them"):
        rain.decode_binary(bytes(8))


def test_senml_base_fields_relative_time_and_cbor() -> None:
    pack = [{"bn": "urn:imei:861000000000003:", "bt": 1_700_000_000, "bu": "m", "n": "a", "v": 1},
            {"n": "b", "v": 2, "t": 60}, {"n": "c", "vb": True, "bt": -30}]  # fmt: skip
    got = decode_pack(json.dumps(pack).encode(), NOW, cbor=False)
    assert [(r.name, r.ts_ms, r.value, r.unit) for r in got] == [
        ("a", 1_700_000_000_000, 1.0, "m"), ("b", 1_700_000_060_000, 2.0, "m"),
        ("c", NOW - 30_000, 1.0, "m")]  # fmt: skip
    cb = cbor2.dumps([{-2: "x:", -3: 1_700_000_000, 0: "a", 2: 1.5}])
    assert decode_pack(cb, NOW, cbor=True)[0][:4] == ("x:", "a", 1_700_000_000_000, 1.5)
    with pytest.raises(PayloadError, match="string and data values"):
        decode_pack(b'[{"n":"a","vs":"x"}]', NOW, cbor=False)


def test_seal_counter_replay_window_duplicate(decoder: Decoder) -> None:
    waterlog = load_products().get("waterlog-v1")
    body = encode(waterlog, [(1_700_000_000, {"water_depth": 0.25, "battery_v": 3.6})])
    first = seal(KEY, "861000000000001", 7, body)
    assert decoder(up("coap", first, "861000000000001")) == [
        ("HZ003", "water_level", 1_700_000_000_000, 0.25),
        ("HZ003", "battery_v", 1_700_000_000_000, 3.6)]  # fmt: skip
    again = up("coap", first, "861000000000001")
    assert decoder(again) == [] and again.duplicate  # the same payload: acknowledged only
    with pytest.raises(AuthError, match="replayed counter 6 for device 861000000000001"):
        decoder(up("coap", seal(KEY, "861000000000001", 6, body), "861000000000001"))
    with pytest.raises(AuthError, match="out of window"):
        decoder(up("coap", seal(KEY, "861000000000001", 7 + (1 << 21), body), "861000000000001"))
    with pytest.raises(AuthError, match="bad HMAC"):
        decoder(up("coap", seal(bytes(16), "861000000000001", 8, body), "861000000000001"))


def test_counters_survive_a_reopen(tmp_path: Path) -> None:
    c = Counters(tmp_path / "c")
    c.accept("d", 5, b"t" * 8)
    c.flush()
    c.close()
    again = Counters(tmp_path / "c")
    with pytest.raises(AuthError, match="replayed counter 4"):
        again.check("d", 4, b"x" * 8)


def test_unknown_devices_bounded(decoder: Decoder) -> None:
    for i in range(10):
        with pytest.raises(PayloadError, match=f"unknown device 86999{i}"):
            decoder(up("udp", datagram(f"86999{i}", b"\x00")))
    assert len(decoder.unknown.counts) == 3 and decoder.unknown.untracked == 7


def test_platform_bodies(decoder: Decoder) -> None:
    manhole = load_products().get("manhole-v1")
    payload = encode(manhole, [(1_700_000_000, {"cover_open": 1, "tilt_deg": 3, "battery_v": 3})])
    got = decoder(up("ctwing", ctwing_body("861000000000002", "x", NOW, payload)))
    assert got[0] == ("HZ001", "cover_open", 1_700_000_000_000, 1.0)
    msg = {"at": NOW, "imei": "861000000000002", "type": 1, "ds_id": "19_0_0",
           "value": payload.hex(), "dev_id": 9}  # fmt: skip
    assert decoder(up("onenet", onenet_body("tok", msg)))[0] == got[0]
    with pytest.raises(AuthError, match="OneNET msg_signature does not verify"):
        decoder(up("onenet", onenet_body("other", msg)))
    # Signed over the text as sent: spacing the platform chose must not matter.
    spaced = json.dumps(msg, indent=1)
    sig = onenet_signature("tok", "n", spaced)
    body = f'{{"nonce": "n", "msg": {spaced}, "msg_signature": "{sig}"}}'.encode()
    assert decoder(up("onenet", body))[0] == got[0]
    assert raw_member('{"a": [1, {"b": 2}] , "msg" : {"x": "}"}}', "msg") == '{"x": "}"}'


def _fuzzed(draw_bytes: bytes, path: str) -> Uplink:
    return up(path, draw_bytes, "861000000000001" if path == "coap" else None)


bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda b: datagram("861000000000002", b), st.binary(max_size=40)),
    st.builds(
        lambda b, ts: ctwing_body("861000000000002", "x", ts, b),
        st.binary(max_size=40),
        st.integers(-(2**70), 2**70),
    ),
    st.builds(
        lambda v: onenet_body(
            "tok", {"at": NOW, "imei": "861000000000003", "type": 1, "ds_id": "19_0_0", "value": v}
        ),
        st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.none()),
    ),
    st.builds(lambda b: base64.b64encode(b), st.binary(max_size=40)),
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
        lambda xs: st.lists(xs, max_size=4) | st.dictionaries(st.text(max_size=8), xs, max_size=4),
        max_leaves=20,
    ).map(lambda doc: json.dumps(doc).encode()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(bodies, st.sampled_from(["coap", "udp", "ctwing", "onenet"])),
                min_size=1, max_size=8))  # fmt: skip
def test_fuzzed_datagrams_and_pushes_never_stop_the_stream(
    tmp_path_factory: pytest.TempPathFactory, messages: list[tuple[bytes, str]]
) -> None:
    decoder = Decoder(
        Lookup(), load_products(), Counters(tmp_path_factory.mktemp("c")), UnknownDevices(), "tok"
    )
    batch = [_fuzzed(b, p) for b, p in messages]
    acked: list[Uplink] = []
    for m in batch:
        m.ack = lambda m=m: acked.append(m)
    produced: list[Reading] = []
    dead: list[tuple[bytes, str, str]] = []

    async def produce(rs: list[Reading]) -> None:
        produced.extend(rs)

    async def dead_letter(raw: bytes, reason: str, source: str) -> None:
        dead.append((raw, reason, source))

    counters: Counter[str] = Counter()
    asyncio.run(deliver(batch, decoder, produce, dead_letter, counters))
    assert acked == batch  # every message answered
    assert len(dead) == sum(1 for m in batch if m.outcome is not None)  # kept with reasons
    assert all(not r.startswith("ingest error") for _, r, _ in dead), dead  # no decoder bug
    assert [raw for raw, _, _ in dead] == [m.payload for m in batch if m.outcome is not None]


# ---- admission against the station registry ------------------------------------------------

#: HZ001 reports its water level only; HZ003 lists no metrics (any is taken).
REPORTS: dict[str, frozenset[str]] = {"HZ001": frozenset({"water_level"}), "HZ003": frozenset()}
ADMIT = {
    "861000000000021": Device("861000000000021", "HZ001", "waterlog-v1", None,
                              {"water_depth": "water_level"}),
    "861000000000022": Device("861000000000022", "HZ404", "waterlog-v1", None,
                              {"water_depth": "water_level"}),
    "861000000000023": Device("861000000000023", "HZ001", "waterlog-v1", None,
                              {"water_depth": "water_levle"}),
    "861000000000024": Device("861000000000024", "HZ003", "waterlog-v1"),
}  # fmt: skip


class AdmitLookup:
    def lookup(self, identity: str) -> Device | None:
        return ADMIT.get(identity)


def waterlog(*depths: float) -> bytes:
    rows = [(1_700_000_000 + 300 * i, {"water_depth": d, "battery_v": 3.6})
            for i, d in enumerate(depths)]  # fmt: skip
    return encode(load_products().get("waterlog-v1"), rows)


@pytest.fixture
def admitting(tmp_path: Path) -> Decoder:
    return Decoder(
        AdmitLookup(), load_products(), Counters(tmp_path / "c"), UnknownDevices(), "tok",
        stations=lambda: REPORTS,
    )  # fmt: skip


def test_a_device_of_an_unknown_station_is_refused_and_counted(admitting: Decoder) -> None:
    for path in ("coap", "ctwing"):
        body = ctwing_body("861000000000022", "x", NOW, waterlog(0.5))
        m = up("coap", waterlog(0.5), "861000000000022") if path == "coap" else up(path, body)
        with pytest.raises(NotAdmitted) as exc:
            admitting(m)
        assert str(exc.value) == (
            "unknown station 'HZ404' of device 861000000000022: its registry entry names it, "
            "the station registry does not have it"
        )
        assert m.outcome is exc.value
    assert admitting.unknown_stations.counts == {"861000000000022 -> HZ404": 2}
    assert reason_class(str(exc.value)) == "unknown_station"


def test_readings_of_a_metric_the_station_does_not_report(admitting: Decoder) -> None:
    # Beside its water level: taken; battery_v refused, dead-lettered the first time.
    m = up("coap", waterlog(0.5, 0.6), "861000000000021")
    assert [r[1] for r in admitting(m)] == ["water_level", "water_level"]
    assert admitting.refusals == [(
        m.payload,
        "unknown metric 'battery_v' of device 861000000000021: station HZ001 reports "
        "water_level (its registry entry); not ingested, the uplink's other readings are; "
        "further readings of it are only counted",
        "t",
    )]  # fmt: skip
    assert m.outcome is None
    admitting.refusals.clear()
    assert len(admitting(up("coap", waterlog(0.7), "861000000000021"))) == 1
    assert admitting.refusals == []  # counted only
    assert admitting.refused_metrics.counts == {"HZ001/battery_v": 3}
    # Nothing its station reports: the whole uplink is refused.
    with pytest.raises(NotAdmitted, match=r"^unknown metric 'water_levle' of device "
                       r"861000000000023: station HZ001 reports water_level"):  # fmt: skip
        admitting(up("coap", waterlog(0.5), "861000000000023"))
    assert admitting.refusals == []
    # A station that lists no metrics takes any.
    got = admitting(up("coap", waterlog(0.5), "861000000000024"))
    assert sorted(r[1] for r in got) == ["battery_v", "water_depth"]


def test_without_a_station_registry_everything_is_taken(decoder: Decoder) -> None:
    manhole = load_products().get("manhole-v1")
    payload = encode(manhole, [(1_700_000_000, {"cover_open": 1, "tilt_deg": 3, "battery_v": 3})])
    got = decoder(up("coap", payload, "861000000000002"))
    assert [r[1] for r in got] == ["cover_open", "tilt_deg", "battery_v"]
    assert decoder.refusals == []


def test_coap_answers_a_refused_device_not_found() -> None:
    m = up("coap", b"", "x")
    m.outcome = NotAdmitted("unknown station 'HZ404' of device x")
    assert coap_code(m) == aiocoap.NOT_FOUND


# ---- a sealed uplink refused whole, sent again ---------------------------------------------

SEALED = Device("861000000000031", "HZ001", "waterlog-v1", KEY, {"water_depth": "water_level"})


class SealedLookup:
    def lookup(self, identity: str) -> Device | None:
        return SEALED if identity == SEALED.identity else None


def test_a_sealed_uplink_refused_whole_is_taken_when_sent_again_after_the_fix(
    tmp_path: Path,
) -> None:
    """Refused whole, its counter is not remembered: sent again it is decoded again
    (refused again while the registry is wrong, not answered as a duplicate), and taken
    once the station reports its metric; only then is a resend a duplicate."""
    reports: dict[str, frozenset[str]] = {"HZ001": frozenset({"rainfall"})}
    decoder = Decoder(
        SealedLookup(), load_products(), Counters(tmp_path / "c"),
        UnknownDevices(), "tok", stations=lambda: reports,
    )  # fmt: skip
    payload = seal(KEY, SEALED.identity, 4, waterlog(0.5))
    for _ in range(2):
        again = up("coap", payload, SEALED.identity)
        with pytest.raises(NotAdmitted, match=r"^unknown metric 'water_level' of device"):
            decoder(again)
        assert not again.duplicate
    reports["HZ001"] = frozenset({"rainfall", "water_level"})  # the station file fixed
    fixed = up("coap", payload, SEALED.identity)
    assert decoder(fixed) == [("HZ001", "water_level", 1_700_000_000_000, 0.5)]
    assert fixed.outcome is None and not fixed.duplicate
    once_more = up("coap", payload, SEALED.identity)
    assert decoder(once_more) == [] and once_more.duplicate  # now it was delivered


def test_a_sealed_uplink_of_an_unknown_station_or_clock_is_not_remembered(
    tmp_path: Path,
) -> None:
    reports: dict[str, frozenset[str]] = {}
    decoder = Decoder(
        SealedLookup(), load_products(), Counters(tmp_path / "c"),
        UnknownDevices(), "tok", stations=lambda: reports,
    )  # fmt: skip
    payload = seal(KEY, SEALED.identity, 9, waterlog(0.5))
    with pytest.raises(NotAdmitted, match=r"^unknown station 'HZ001'"):
        decoder(up("coap", payload, SEALED.identity))
    # Two days ahead of the gateway's clock: refused, and not remembered either.
    ahead = (NOW // 1000) + 2 * 86_400
    rows = [(ahead, {"water_depth": 0.5, "battery_v": 3.6})]
    future = seal(KEY, SEALED.identity, 10, encode(load_products().get("waterlog-v1"), rows))
    reports["HZ001"] = frozenset()
    with pytest.raises(PayloadError, match="ahead of the gateway's clock"):
        decoder(up("coap", future, SEALED.identity))
    assert len(decoder(up("coap", payload, SEALED.identity))) == 2  # counter 9: taken


# ---- the clock-skew rule every connector keeps ---------------------------------------------

#: Two days ahead of the gateway's clock at arrival (``NOW``): over the default skew (a day).
AHEAD_MS = NOW + 2 * 86_400_000


def test_readings_too_far_ahead_are_refused_on_every_path(decoder: Decoder) -> None:
    """The rule of ``connectors.ingest.Admission`` (MQTT's), on CoAP, raw UDP, CTWing
    (transparent and decoded) and OneNET: the whole uplink is dead-lettered."""
    manhole = load_products().get("manhole-v1")
    rows = [(NOW // 1000, {"cover_open": 0, "tilt_deg": 0, "battery_v": 3.5}),
            (AHEAD_MS // 1000, {"cover_open": 1, "tilt_deg": 3, "battery_v": 3.5})]  # fmt: skip
    binary = encode(manhole, rows)
    decoded = json.dumps({
        "messageType": "dataReport", "timestamp": AHEAD_MS, "IMEI": "861000000000002",
        "deviceId": "x", "payload": {"serviceData": {"cover_state": 1}},
    }).encode()  # fmt: skip
    msg = {"at": AHEAD_MS, "imei": "861000000000002", "type": 1, "ds_id": "3342_0_5500",
           "value": 1, "dev_id": 5}  # fmt: skip
    senml = json.dumps([{"bn": "urn:imei:861000000000003:", "bt": AHEAD_MS / 1000,
                         "n": "rainfall", "v": 1.5}]).encode()  # fmt: skip
    uplinks = [
        up("coap", binary, "861000000000002"),
        up("coap", senml, None, 110),
        up("udp", datagram("861000000000002", binary)),
        up("ctwing", ctwing_body("861000000000002", "x", NOW, binary)),
        up("ctwing", decoded),
        up("onenet", onenet_body("tok", msg)),
    ]
    for m in uplinks:
        with pytest.raises(PayloadError) as exc:
            decoder(m)
        reason = str(exc.value)
        assert reason.startswith(f"ts {AHEAD_MS} (") and reason.endswith(
            "is more than 86400 s ahead of the gateway's clock (2027-01-15T08:00:00+00:00; "
            "ingest.max_clock_skew_s)"
        ), (m.path, reason)
        assert reason_class(reason) == "bad_timestamp" and m.outcome is exc.value
    # Within the skew (an hour ahead), and a push dated by the platform: taken.
    near = json.loads(decoded)
    near["timestamp"] = NOW + 3_600_000
    assert decoder(up("ctwing", json.dumps(near).encode())) == [
        ("HZ001", "cover_open", NOW + 3_600_000, 1.0)
    ]


def test_readings_before_2000_are_refused(decoder: Decoder) -> None:
    msg = {"at": 5_000, "imei": "861000000000002", "type": 1, "ds_id": "3342_0_5500",
           "value": 1, "dev_id": 5}  # fmt: skip
    with pytest.raises(PayloadError, match=r"^ts 5000 .* is before 2000-01-01"):
        decoder(up("onenet", onenet_body("tok", msg)))

"""HJ 212 decoding against the captured packets (shared/data/hj212) and FACTS.md §2.3.
Expected values come from the data files and FACTS.md, never from the decoder."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.decoded import Rejection
from connectors.hj212 import Packet, data_response, decode, encode, request_response, wants_reply
from connectors.hj212.codes import POLLUTANTS
from engine.contracts.batch import Quality

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hj212"
ROWS = [json.loads(line) for line in (DATA / "hj212_frames.jsonl").read_text().splitlines()]


def local(text: str) -> int:
    t = datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    return int(t.timestamp() * 1000) - 8 * 3600_000 + (int(text[14:]) if len(text) == 17 else 0)


def ok(raw: bytes) -> Packet:
    p = decode(raw)
    assert isinstance(p, Packet), p
    return p


@pytest.mark.parametrize("row", ROWS, ids=[f"{i}-{r['cn']}" for i, r in enumerate(ROWS)])
def test_every_captured_packet_decodes_or_is_rejected_as_its_file_says(row: dict) -> None:
    raw = row["frame"].encode()
    result = decode(raw)
    if not row["len_ok"]:
        assert isinstance(result, Rejection)
        assert result.reason == (
            f"declared length {row['len_declared']:04d}, actual {row['len_actual']:04d}"
        )
        return
    if not row["crc_ok"]:
        assert isinstance(result, Rejection)
        assert result.reason == f"CRC declared {row['crc_declared']}, computed {row['crc_calc']}"
        assert result.raw == raw
        return
    assert isinstance(result, Packet), result
    assert result.header == row["header_my_parse"]
    assert result.cp == row["cp_fields_my_parse"]
    assert f"{result.crc:04X}" == row["crc_declared"]
    cp = row["cp_fields_my_parse"]
    expected = {}
    if row["cn"] in ("2011", "2051", "2061", "2031"):
        for key, text in cp.items():
            code, _, suffix = key.rpartition("-")
            if code in POLLUTANTS and suffix in ("Rtd", "Avg", "Min", "Max", "Cou"):
                expected[key] = float(text)
    assert len(result.readings) == len(expected)
    assert sorted(r.value for r in result.readings) == sorted(expected.values())
    for r in result.readings:
        assert r.station == row["header_my_parse"]["MN"]
        assert r.ts_ms == local(cp["DataTime"])


def test_the_split_text_files_agree() -> None:
    for name, rejected in (("valid_crc", False), ("bad_crc", True), ("len_mismatch", True)):
        for line in (DATA / f"hj212_frames_{name}.txt").read_text().splitlines():
            assert isinstance(decode(line.encode()), Rejection) is rejected, line[:60]


H1 = ("##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;"
      "CP=&&RtdInterval=30&&1C80\r\n")  # fmt: skip
H2 = ("##0285QN=20190925181031464;ST=22;CN=2061;PW=BF470F88957588DE902D1A52;MN=Z13401000010301;"
      "Flag=5;CP=&&DataTime=20190924220000;a34006-Avg=2.69700,a34006-Flag=N;a34007-Avg=7.96600,"
      "a34007-Flag=N;a34048-Avg=3.30600,a34048-Flag=N;a34047-Avg=7.35700,a34047-Flag=N;"
      "a34049-Avg=10.66300,a34049-Flag=N&&C181\r\n")  # fmt: skip
H4_SEGMENT = (
    "QN=20180427125809000;ST=22;CN=2011;PW=123456;MN=LXHB0CS0306310;Flag=5;CP=&&DataTime="
    "20180427125809;a34004-Rtd=75600.000,a34004-Flag=N;a34002-Rtd=140600.000,a34002-Flag=N;"
    "a34001-Rtd=178000.000,a34001-Flag=N;a01001-Rtd=24.8,a01001-Flag=N;a01002-Rtd=46.8,"
    "a01002-Flag=N;a01006-Rtd=101.380,a01006-Flag=N;a01007-Rtd=0.0,a01007-Flag=N;"
    "a01008-Rtd=25,a01008-Flag=N;LA-Rtd=57.9,LA-Flag=N&&"
)
H5 = ("##0178ST=32;CN=2011;PW=123456;MN=0873HHMZWSLH02;CP=&&DataTime=20160103133030;060-Rtd=3.0943,"
      "060-Flag=N;011-Rtd=18.0412,011-Flag=N;001-Rtd=8.2137,001-Flag=N;B01-Rtd=10.9890,"
      "B01-Flag=N&&a9c1\r\n")  # fmt: skip


def test_facts_vectors() -> None:
    h1 = ok(H1.encode())
    assert (h1.cn, h1.crc, h1.flag, h1.cp) == ("1062", 0x1C80, 5, {"RtdInterval": "30"})
    assert wants_reply(h1) and h1.readings == []
    h2 = ok(H2.encode())
    assert (h2.cn, h2.mn, h2.crc) == ("2061", "Z13401000010301", 0xC181)
    assert h2.data_time_ms == local("20190924220000")
    h4_raw = b"##0379" + H4_SEGMENT.encode() + b"5440\r\n"
    assert encode(H4_SEGMENT) == h4_raw
    h4 = ok(h4_raw)
    got = {r.metric: r.value for r in h4.readings}
    assert got == {"pm2_5_rt": 75600.0, "pm10_rt": 140600.0, "tsp_rt": 178000.0,
                   "air_temperature_rt": 24.8, "relative_humidity_rt": 46.8,
                   "air_pressure_rt": 101.38, "wind_speed_rt": 0.0,
                   "wind_direction_rt": 25.0}  # fmt: skip
    assert {r.quality for r in h4.readings} == {Quality.GOOD}
    h5 = ok(H5.encode())  # 2005 style: no QN, no Flag, lower-case CRC
    assert "QN" not in h5.header and h5.flag is None and h5.crc == 0xA9C1
    assert not wants_reply(h5)


def test_data_flags_become_quality() -> None:
    seg = H4_SEGMENT.replace("a34004-Flag=N", "a34004-Flag=D").replace(
        "a34002-Flag=N", "a34002-Flag=Q"
    )
    q = {r.metric: r.quality for r in ok(encode(seg)).readings}
    assert q["pm2_5_rt"] == Quality.FAIL  # fault: invalid
    assert q["pm10_rt"] == Quality.SUSPECT  # a flag the standard does not define
    assert q["tsp_rt"] == Quality.GOOD


def test_rejections() -> None:
    assert decode(H1.replace("1C80", "1100").encode()).reason == (  # type: ignore[union-attr]
        "CRC declared 1100, computed 1C80"
    )
    assert decode(H1.replace("##0101", "##0105").encode()).reason == (  # type: ignore[union-attr]
        "declared length 0105, actual 0101"
    )
    bad = H4_SEGMENT.replace("a34004-Rtd=75600.000", "a34004-Rtd=7x5600.00")
    assert decode(encode(bad)).reason == "bad value '7x5600.00' for a34004-Rtd"  # type: ignore[union-attr]
    assert decode(b"hello").reason == "packet does not start with ##: b'he'"  # type: ignore[union-attr]


def test_replies_echo_the_packet_and_are_valid_packets() -> None:
    h2 = ok(H2.encode())
    ack = ok(data_response(h2))
    assert ack.header == {"QN": "20190925181031464", "ST": "91", "CN": "9014",
                          "PW": "BF470F88957588DE902D1A52", "MN": "Z13401000010301",
                          "Flag": "4"}  # fmt: skip
    assert ack.cp == {} and not wants_reply(ack)
    rr = ok(request_response(ok(H1.encode())))
    captured_9011 = next(r for r in ROWS if r["cn"] == "9011")  # a station's own 9011
    assert rr.cp == captured_9011["cp_fields_my_parse"] == {"QnRtn": "1"}
    assert (rr.cn, rr.header["QN"], rr.header["Flag"]) == ("9011", "20160801085857223", "4")

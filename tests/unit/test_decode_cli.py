"""``vigil decode`` end to end, as an operator runs it: a subprocess, frames in, JSON out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
V1 = "7e7e011090330853a0002f000802009f26020209410003bde3"
V5 = (  # as an operator pastes it, with spaces
    "7E 7E 05 00 11 22 33 44 03 E8 32 00 2B 02 00 34 17 07 18 11 00 16 F1 F1 00 11 22 33 44 48"
    " F0 F0 17 07 18 11 00 20 19 00 00 40 26 19 00 00 40 39 23 00 01 04 90 38 12 10 99 03 A4 21"
)


def vigil(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.tools.cli", "decode", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_sl651_frames_as_arguments_and_a_rejection_exits_1() -> None:
    bad = V1[:-4] + "1100"
    out = vigil("sl651", V1, V5, bad)
    assert out.returncode == 1, out.stderr
    docs = [json.loads(line) for line in out.stdout.splitlines()]
    assert [d["ok"] for d in docs] == [True, True, False]
    assert docs[0]["station"] == "1090330853" and docs[0]["function"] == "2F"
    assert docs[0]["send_time"] == "2026-02-02T09:41:00+08:00"
    levels = [r for r in docs[1]["readings"] if r["metric"] == "water_level"]
    assert [(r["value"], r["time"]) for r in levels] == [(10.49, "2017-07-18T11:00:00+08:00")]
    assert docs[2]["reason"] == "CRC declared 1100, computed BDE3"
    assert docs[2]["raw"] == bad.upper()


def test_hj212_valid_file_on_stdin_exits_0() -> None:
    lines = (DATA / "hj212/hj212_frames_valid_crc.txt").read_text()
    out = vigil("hj212", stdin=lines)
    assert out.returncode == 0, out.stderr
    docs = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(docs) == len(lines.splitlines()) and all(d["ok"] for d in docs)


def test_hj212_length_mismatch_on_stdin_exits_1() -> None:
    out = vigil("hj212", stdin=(DATA / "hj212/hj212_frames_len_mismatch.txt").read_text())
    assert out.returncode == 1
    (doc,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert doc["reason"] == "declared length 0888, actual 0321"

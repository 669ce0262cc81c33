"""The embedded log on real damage to its real files: a cut write-ahead log, a table file
with flipped bytes, a table file cut short. Each must be found (never read as a shorter
log), refuse to open or fail ``check``, and ``repair`` must keep what is readable, say
what is lost, and leave a log that passes ``check`` and never reuses a committed offset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.runtime.transport import integrity
from engine.runtime.transport.log import Append, DurableLog, LogDamaged
from engine.tools.cli import main

PER_PARTITION = 14_000
WRITER = """
import os, signal, sys
from engine.runtime.transport.log import Append, DurableLog
log = DurableLog(sys.argv[1])
log.create_topic("t", 2)
for i in range(280):
    log.append([Append("t", j % 2, None, os.urandom(200), 1000 + i) for j in range(100)])
log.commit("g", {("t", 0): 9000, ("t", 1): 100})
if sys.argv[2] == "table":
    log.close()  # the records go into a table file
else:
    os.kill(os.getpid(), signal.SIGKILL)  # like a crash: the records only in the WAL
"""


def _write(data: Path, where: str) -> None:
    subprocess.run([sys.executable, "-c", WRITER, str(data), where], check=False, timeout=120)
    files = os.listdir(data / "log")
    assert any(f.endswith(".sst") for f in files) == (where == "table"), files


def _largest(data: Path, suffix: str) -> Path:
    return max((data / "log").glob(f"*{suffix}"), key=lambda p: p.stat().st_size)


def _flip(path: Path, at: float) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_an_intact_log_passes(tmp_path: Path) -> None:
    """Including what a crash leaves (the writer is killed with SIGKILL): the strict WAL
    recovery must not refuse it."""
    _write(tmp_path, "wal")
    report = integrity.check(tmp_path)
    assert report.ok
    assert report.records == {"t/0": PER_PARTITION, "t/1": PER_PARTITION}


def test_a_cut_write_ahead_log_refuses_to_open_and_repair_keeps_the_prefix(
    tmp_path: Path,
) -> None:
    _write(tmp_path, "wal")
    wal = _largest(tmp_path, ".log")
    os.truncate(wal, wal.stat().st_size * 2 // 3)
    # RocksDB's default recovery opened this with 2/3 of the records and no word.
    with pytest.raises(LogDamaged, match="Corruption: truncated record body"):
        DurableLog(tmp_path)
    with pytest.raises(LogDamaged):
        integrity.check(tmp_path)

    report = integrity.repair(tmp_path)
    assert report.ok
    assert len(report.lost) == 1 and "write-ahead log was damaged" in report.lost[0]
    kept = report.records
    assert set(kept) == {"t/0", "t/1"}
    assert 0 < kept["t/0"] < PER_PARTITION and 0 < kept["t/1"] < PER_PARTITION
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("log.damaged-")]
    log = DurableLog(tmp_path)
    assert log.highwater("t", 0) == kept["t/0"]
    log.close()


def test_a_damaged_table_block_is_found_and_repair_steps_over_it(tmp_path: Path) -> None:
    _write(tmp_path, "table")
    _flip(_largest(tmp_path, ".sst"), 0.75)
    log = DurableLog(tmp_path)  # opens: the block is read only when needed
    with pytest.raises(LogDamaged, match="block checksum mismatch"):
        for p in (0, 1):
            log.read("t", p, 0, 10**9)  # used to return the records before the block, silently
    log.close()
    report = integrity.check(tmp_path)
    assert len(report.problems) == 1
    assert "unreadable after offset" in report.problems[0]
    assert "block checksum mismatch" in report.problems[0]

    repaired = integrity.repair(tmp_path)
    assert repaired.ok
    (lost,) = repaired.lost
    name, _, rest = lost.partition(": records ")
    first, last = (int(x) for x in rest.split(" ")[0].split(".."))
    assert rest.endswith("are unreadable")
    assert repaired.records[name] == PER_PARTITION - (last - first + 1)
    other = "t/1" if name == "t/0" else "t/0"
    assert repaired.records[other] == PER_PARTITION
    log = DurableLog(tmp_path)
    partition = int(name[-1])
    records = log.read("t", partition, 0, 10**9)
    assert [r.offset for r in records] == [
        o for o in range(PER_PARTITION) if not first <= o <= last
    ]
    log.close()


def test_a_cut_table_file_refuses_to_open_and_repair_reports_the_loss(tmp_path: Path) -> None:
    _write(tmp_path, "table")
    table = _largest(tmp_path, ".sst")
    os.truncate(table, table.stat().st_size // 2)
    with pytest.raises(LogDamaged, match="Sst file size mismatch"):
        DurableLog(tmp_path)
    report = integrity.repair(tmp_path)
    assert report.ok
    assert any("a table file was unreadable" in line for line in report.lost)


def test_repair_never_reuses_an_offset_a_group_committed(tmp_path: Path) -> None:
    """The tail of a partition is lost past what a consumer committed: the next record
    must get an offset past the commit, or the consumer (and the kernels' checkpoint at
    that offset) would skip it."""
    log = DurableLog(tmp_path)
    log.create_topic("t", 1)
    log.append([Append("t", 0, None, b"x", 1) for _ in range(10)])
    log.commit("g", {("t", 0): 25})  # committed past the end: records 10..24 are gone
    log.close()
    report = integrity.check(tmp_path)
    assert report.problems == [
        "t/0: group g committed offset 25, but the log ends at 10: records 10..24 are missing"
    ]
    repaired = integrity.repair(tmp_path)
    assert repaired.ok
    assert repaired.lost == ["t/0: records 10..24 are gone (committed by g, no longer in the log)"]
    log = DurableLog(tmp_path)
    assert log.append([Append("t", 0, None, b"new", 2)]) == [25]
    log.close()


def test_data_check_and_repair_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, "table")
    assert main(["data", "check", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == (
        f"{tmp_path}: the log is whole: {2 * PER_PARTITION} records in 2 partitions\n"
    )
    _flip(_largest(tmp_path, ".sst"), 0.25)
    assert main(["data", "check", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path}: t/0: unreadable after offset ")
    assert main(["data", "repair", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{tmp_path}: lost: t/0: records ")
    assert out[-1].startswith(f"{tmp_path}: repaired: ")
    assert main(["data", "check", "--data-dir", str(tmp_path)]) == 0


def test_repair_refuses_while_the_log_is_open(tmp_path: Path) -> None:
    log = DurableLog(tmp_path)
    try:
        command = ["data", "repair", "--data-dir", str(tmp_path)]
        child = subprocess.run(
            [sys.executable, "-m", "engine.tools.cli", *command],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        log.close()
    assert child.returncode == 1
    assert "is in use (a gateway is running on it): stop it first" in child.stderr


def test_a_full_disk_at_start_is_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """RocksDB writes a few files at every open; on a full disk it fails with this text
    (seen on a full tmpfs). Stand-in for the disk: the database's open."""
    from engine.runtime.transport import log as log_module

    packs = Path(__file__).resolve().parents[2] / "rules" / "packs"
    config = tmp_path / "vigil.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\nstations: {packs / 'demo_stations.yaml'}\n"
        f"rules: [{packs / 'flood.yaml'}]\n"
    )
    detail = (
        "IO error: No space left on device: While appending to file: "
        f"{tmp_path}/data/log/MANIFEST-000013: No space left on device"
    )

    def full(*args: object, **kwargs: object) -> None:
        raise Exception(detail)  # what rocksdict raises

    monkeypatch.setattr(log_module, "Rdict", full)
    assert main(["run", "--config", str(config)]) == 1
    assert capsys.readouterr().err == (
        f"vigil: no space left on the filesystem of {tmp_path / 'data'}: the log cannot open "
        f"({detail}). Free some space: the gateway then starts, its ingest paused until "
        "storage.min_free_mb are free (README: Storage).\n"
    )

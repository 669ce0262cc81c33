"""The YAML device file followed while the gateway runs (``YamlDevices.reload`` and
``follow``): an edit that validates replaces the device set, a broken one is refused
with one log line and the devices in force stay. The gateway end to end (SIGHUP, real
CoAP) is tests/integration/test_nbiot_admission.py."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from connectors.nbiot.devices import YamlDevices

A, B, C = "861000000000031", "861000000000032", "861000000000033"


def write(path: Path, *identities: str, mtime_ns: int | None = None) -> None:
    lines = ["devices:"] + [
        f'  - {{identity: "{i}", station: HZ001, product: waterlog-v1}}' for i in identities
    ]
    path.write_text("\n".join(lines) + "\n")
    bump(path, mtime_ns)


def bump(path: Path, mtime_ns: int | None = None) -> None:
    """A new mtime, as an edit a second later would leave (some filesystems keep
    whole seconds)."""
    st = os.stat(path)
    ns = mtime_ns if mtime_ns is not None else st.st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(ns, ns))


def refused_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()]


def test_an_edit_is_read_a_broken_one_refused_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.nbiot.devices")
    path = tmp_path / "devices.yaml"
    write(path, A, B)
    devices = YamlDevices(path)
    assert devices.lookup(A) is not None and devices.lookup(C) is None
    assert not devices.reload()  # unchanged: not even read
    write(path, A, C)
    assert devices.reload()
    assert devices.lookup(C) is not None and devices.lookup(B) is None
    assert any(f"added: {C}; removed: {B}" in r.getMessage() for r in caplog.records)
    # A broken edit, then one that does not validate: each refused with one line, and
    # not again at the next intervals while the file stays as it is.
    path.write_text("devices:\n  - {identity: x, station: [unclosed\n")
    bump(path)
    for _ in range(3):
        assert not devices.reload()
    write(path, A, A)
    for _ in range(3):
        assert not devices.reload()
    lines = refused_lines(caplog)
    assert len(lines) == 2, lines
    assert all(line.count("\n") == 0 for line in lines)
    assert "the 2 devices in force stay" in lines[0] and "not valid YAML" in lines[0]
    assert f"device identity '{A}' appears twice" in lines[1]
    assert devices.lookup(A) is not None and devices.lookup(C) is not None  # in force
    # A forced reload (SIGHUP) reads the file whatever its signature, and says so again.
    assert not devices.reload(force=True)
    assert len(refused_lines(caplog)) == 3
    # Repaired: read.
    write(path, B)
    assert devices.reload()
    assert devices.lookup(B) is not None and devices.lookup(A) is None
    assert len(devices) == 1
    # The file gone: said once, the devices stay.
    path.unlink()
    for _ in range(3):
        assert not devices.reload()
    assert len(refused_lines(caplog)) == 4 and "cannot read" in refused_lines(caplog)[-1]
    assert devices.lookup(B) is not None


def test_follow_reads_an_edit_within_its_interval_and_at_once_when_woken(
    tmp_path: Path,
) -> None:
    path = tmp_path / "devices.yaml"
    write(path, A)
    devices = YamlDevices(path)

    async def scenario() -> None:
        wake = asyncio.Event()
        task = asyncio.ensure_future(devices.follow(0.05, wake))
        try:
            write(path, A, B)
            async with asyncio.timeout(30):
                while devices.lookup(B) is None:  # the interval reads it
                    await asyncio.sleep(0.01)
            # The same size and mtime as before the edit: only a forced read sees it.
            st = os.stat(path)
            write(path, A, C, mtime_ns=st.st_mtime_ns)
            await asyncio.sleep(0.3)
            assert devices.lookup(C) is None
            wake.set()
            async with asyncio.timeout(30):
                while devices.lookup(C) is None:
                    await asyncio.sleep(0.01)
            assert devices.lookup(B) is None
        finally:
            task.cancel()

    asyncio.run(scenario())

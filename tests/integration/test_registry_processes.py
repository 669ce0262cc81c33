"""A running reader (as the gateway holds the registry) sees what another process
imports and removes, without a restart: real processes, `vigil registry` as an operator
runs it."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from pathlib import Path

from rules.store import make_imei

# The gateway's side: a DeviceRegistry followed on an event loop, the lookups on the loop.
READER = """
import asyncio, sys
from pathlib import Path
from rules.store import DeviceRegistry

async def main(store, identity):
    with DeviceRegistry(Path(store), cache_size=10) as reg:
        follow = asyncio.create_task(reg.follow(0.05))
        last = object()
        while True:
            device = reg.lookup(identity)
            now = device.station if device else None
            if now != last:
                print(f"station {now}", flush=True)
                last = now
            await asyncio.sleep(0.01)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def vigil(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "engine.tools.cli", "registry", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_a_running_reader_sees_imports_and_removals_of_another_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert (
        vigil("import", "rules/packs/demo_stations.yaml", "--data-dir", str(data)).returncode == 0
    )
    imei = make_imei(86123456, 42)
    csv1 = tmp_path / "d1.csv"
    csv1.write_text(f"identity,station,product\n{imei},HZ001,waterlog-v1\n")
    assert vigil("import", str(csv1), "--data-dir", str(data)).returncode == 0

    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(data / "registry"), imei],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x.strip()) for x in reader.stdout or []],
                     daemon=True).start()  # fmt: skip
    try:
        assert lines.get(timeout=60) == "station HZ001"
        csv2 = tmp_path / "d2.csv"
        csv2.write_text(f"identity,station,product\n{imei},HZ002,waterlog-v1\n")
        done = vigil("import", str(csv2), "--data-dir", str(data))
        assert done.returncode == 0, done.stderr
        assert "0 added, 1 updated" in done.stdout
        assert lines.get(timeout=60) == "station HZ002"
        gone = vigil("remove", imei, "--data-dir", str(data))
        assert gone.returncode == 0, gone.stderr
        assert lines.get(timeout=60) == "station None"
    finally:
        reader.kill()
        reader.wait(timeout=30)
    assert reader.returncode is not None

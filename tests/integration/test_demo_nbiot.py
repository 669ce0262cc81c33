"""``vigil demo --nbiot`` end to end: the real command, as a user runs it (shortened)."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_nbiot_demo_alerts_clears_registers_and_refuses() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine.tools.cli", "demo", "--nbiot", "--duration", "40"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    # Two sensors imported before the start, one while the gateway runs.
    assert re.search(r"import #1 of \S*/devices\.csv: .*2 added", out), out
    assert re.search(r"import #2 of \S*/installed\.csv: .*1 added", out), out
    # The underpass over CoAP (sealed), the culvert through CTWing, every uplink confirmed.
    assert re.search(r"WL01 \(\d{15}\): 36 uplinks confirmed, highest level orange, all clear", out)
    assert re.search(r"WL03 \(\d{15}\): 36 uplinks confirmed, highest level yellow, all clear", out)
    # The sensor installed during the storm: accepted from its import on, no alert.
    wl02 = re.search(r"WL02 \(\d{15}\): (\d+) uplinks confirmed, highest level none", out)
    assert wl02 is not None and int(wl02.group(1)) == 24, out
    assert "▲ ORANGE    示例下穿隧道 Demo underpass积水深度" in out
    # The stranger: 4.04 and a dead letter with its IMEI. The only other dead letters are
    # WL02's uplinks sent before the gateway caught up with its import (if any).
    stranger = re.search(r"unregistered (\d{15}): answered 4.04 Not Found unknown device \1", out)
    assert stranger is not None, out
    early = re.search(r"WL02's uplinks refused before its import reached the gateway: (\d+)", out)
    assert early is not None, out
    dead = re.findall(r"dead-letter: nbiot:coap:[^ ]+/nb/(\d{15}): unknown device (\d{15})", out)
    assert dead.count((stranger.group(1), stranger.group(1))) == 1
    assert len(dead) == 1 + int(early.group(1)) == out.count("dead-letter:"), out

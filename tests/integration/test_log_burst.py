"""A burst of bad input leaves a readable log (issue 13 item 4): 100,000 late readings
through the live path (mosquitto -> gateway -> kernels -> dead letters) write a
handful of lines whose counts add up to every dead letter recorded, not 100,000
warnings."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from connectors.mqtt.mosquitto import Mosquitto
from engine.runtime.logs import BURST
from engine.runtime.transport.log import DurableLog
from simulators.publisher import Publisher
from tests.integration.conftest import EngineProcess, write_settings

pytestmark = pytest.mark.integration

T0 = 1_719_763_200_000
HOUR = 3_600_000
LATE = 100_000
PER_MESSAGE = 1_000  # 35 kB a message: under the gateway's 64 KiB payload bound
RULE = """\
version: 1
rules:
  - id: test.level
    select: {ids: [HZ003]}
    metric: water_level
    unit: m
    window: {size: 15m, aggregate: max}
    levels:
      yellow: {above: 9.0}
"""


def _counted(text: str) -> tuple[int, int, int]:
    """(late readings the log accounts for, lines of one reading, summary lines)."""
    lines = [line for line in text.splitlines() if "dead-letter from HZ003/water_level" in line]
    total = single = 0
    for line in lines:
        summary = re.search(r"[ \[]count=(\d+)\]$", line)
        total += int(summary.group(1)) if summary else 1
        single += summary is None
    return total, single, len(lines) - single


def test_a_burst_of_late_readings_is_summarised(mosquitto: Mosquitto, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULE)
    config = write_settings(tmp_path, mosquitto.port, rules=[str(rules)])
    log = tmp_path / "engine.log"
    engine = EngineProcess(config, log)
    engine.start()
    pub = Publisher(mosquitto.host, mosquitto.port, client_id="burst-publisher")
    try:
        # The gauge is at T0 + 10 h; then 100,000 readings of its first hour: all late.
        pub.publish([("HZ003", "water_level", T0 + 10 * HOUR, 1.0)])
        for start in range(0, LATE, PER_MESSAGE):
            batch = [{"value": 1.0, "ts": T0 + i} for i in range(start, start + PER_MESSAGE)]
            pub.publish_raw("vigil/HZ003/water_level", json.dumps(batch).encode())
        # Wait for the burst to be evaluated: every late reading dead-lettered (the log
        # has counted them all, in lines or the summaries written while the burst lasts).
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and _counted(log.read_text())[0] < LATE:
            time.sleep(0.5)
        assert engine.terminate() == 0  # the last summary is written at exit
        dead = DurableLog(tmp_path / "data")
        try:
            recorded = dead.highwater("vigil-test-dead-letter", 0)
        finally:
            dead.close()
        total, single, summaries = _counted(log.read_text())
        # Every dead letter is accounted for in the log, by line or by count.
        assert recorded == LATE  # every late reading is dead-lettered, none dropped
        assert total == recorded, log.read_text()[-3000:]
        # The first few in full, then one summary per 10 s while the burst lasts (it
        # lasts less than the 10 minutes waited for it).
        assert single == BURST
        assert summaries <= 60
        assert len(log.read_text().splitlines()) < 100
    finally:
        pub.close()
        engine.kill()

"""``vigil demo`` end to end: the real command, as a user runs it (shortened)."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_demo_tells_acknowledges_escalates_and_clears() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine.tools.cli", "demo", "--duration", "40"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    # The flood itself, as before: alerts, dead letters, every gauge cleared.
    # Three bad MQTT messages, an SL 651 frame with a bad CRC, two HJ 212 packets with a
    # wrong password.
    assert "dead-lettered messages: 6" in out
    assert re.search(r"SK01: highest level \w+ .* all clear", out)
    assert re.search(r"AQ01: highest level \w+ .* all clear", out)
    assert re.search(r"HZ002: highest level red .* all clear", out)
    # Grouped notifications reach the duty room's webhook and mail, signed.
    assert re.search(r"⇒ duty-room +#1 FIRING \w+: demo_river: ", out)
    assert "✉ duty-mail" in out
    assert re.search(r"the duty room's page: http://127\.0\.0\.1:\d+/console", out)
    assert "(all signed)" in out
    # One alert acknowledged from the CLI, against the running gateway.
    ack = re.search(r'\$ vigil alerts ack (\w+) --by "Duty officer Li" .*\n +(\w+): (.*)', out)
    assert ack is not None, out
    assert ack.group(2).startswith(ack.group(1))
    assert ack.group(3).startswith("acknowledged by Duty officer Li at ")
    # The red is left alone: it escalates, and the section head takes it by the link.
    assert re.search(
        r"⇒ section-head +#1 FIRING red: demo_river: HZ002 red .*"
        r"escalation step 1: section head: unacknowledged for \d+s",
        out,
    )
    assert "Section head Wang opens the link in the message: HZ002 acknowledged" in out
    # And the all-clears.
    assert re.search(r"⇒ duty-room +#\d+ RESOLVED none: demo_river: ", out)
    assert re.search(r"all-clear messages: [1-9]", out)

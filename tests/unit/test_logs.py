"""The process's log format, its rate limit and its secret masking (engine.runtime.logs)."""

from __future__ import annotations

import io
import json
import logging

from connectors.mqtt.options import MqttOptions
from engine.runtime.logs import HumanFormatter, JsonFormatter, RateLimit, mask_secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _logger(limit: RateLimit, fmt: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(fmt)
    handler.addFilter(limit)
    logger = logging.getLogger(f"vigil.test.{id(limit)}")
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    return logger, out


def test_a_burst_of_one_kind_becomes_a_few_lines_and_one_summary() -> None:
    clock = Clock()
    limit = RateLimit(burst=3, interval_s=10.0, clock=clock)
    logger, out = _logger(limit, HumanFormatter())
    for i in range(100_000):
        logger.warning("dead-letter from %s: %s", f"S{i}/level", "late reading")
    logger.info("other lines pass")  # INFO is never held back
    logger.error("another kind %d", 1)  # its own allowance
    clock.now += 10.0
    for record in limit.flush():
        logger.handlers[0].handle(record)
    lines = out.getvalue().splitlines()
    assert len(lines) == 6
    assert [line.split(": ", 1)[1] for line in lines[:3]] == [
        "dead-letter from S0/level: late reading",
        "dead-letter from S1/level: late reading",
        "dead-letter from S2/level: late reading",
    ]
    assert lines[5].endswith(
        "99997 more like this in the last 10 s, not shown; the last: "
        "dead-letter from S99999/level: late reading [count=99997]"
    )
    assert " WARNING " in lines[5]
    # While the burst goes on, an interval gives one summary line and nothing else ...
    for _ in range(1000):
        logger.warning("dead-letter from %s: %s", "S1/level", "late reading")
    clock.now += 10.0
    for record in limit.flush():
        logger.handlers[0].handle(record)
    lines = out.getvalue().splitlines()
    assert len(lines) == 7 and "1000 more like this in the last 10 s" in lines[6]
    # ... and after a quiet interval the kind passes again.
    clock.now += 10.0
    assert limit.flush() == []
    logger.warning("dead-letter from %s: %s", "S2/level", "late reading")
    assert out.getvalue().splitlines()[-1].endswith("dead-letter from S2/level: late reading")


def test_critical_is_never_held_back() -> None:
    limit = RateLimit(burst=1, interval_s=10.0, clock=Clock())
    logger, out = _logger(limit, HumanFormatter())
    for _ in range(5):
        logger.critical("ingest failed")
    assert len(out.getvalue().splitlines()) == 5
    assert limit.flush(final=True) == []


def test_json_lines_carry_the_app_fields() -> None:
    logger, out = _logger(RateLimit(), JsonFormatter())
    logger.warning(
        "dead-letter from %s: %s",
        "HZ001/water_level",
        "late",
        extra={"station": "HZ001", "partition": 2, "offset": 17, "rule": "flood.level"},
    )
    doc = json.loads(out.getvalue())
    assert doc["message"] == "dead-letter from HZ001/water_level: late"
    assert (doc["level"], doc["station"], doc["partition"], doc["offset"], doc["rule"]) == (
        "WARNING",
        "HZ001",
        2,
        17,
        "flood.level",
    )
    assert doc["ts"].endswith("Z") and doc["logger"].startswith("vigil.test.")


def test_secrets_are_masked_in_every_line_and_repr() -> None:
    options = MqttOptions(username="gw", password="s3cret-pw")
    assert "s3cret-pw" not in repr(options) and "password=***" in repr(options)
    mask_secret("s3cret-pw")
    for fmt in (HumanFormatter(), JsonFormatter()):
        logger, out = _logger(RateLimit(), fmt)
        logger.info("connecting with %s", {"password": "s3cret-pw"})
        assert "s3cret-pw" not in out.getvalue() and "***" in out.getvalue()

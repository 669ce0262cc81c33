from __future__ import annotations

from pathlib import Path

import pytest

from engine.runtime.transport.log import Append, DurableLog, TopicExists, UnknownTopic


def test_offsets_commits_and_blobs_survive_reopen(tmp_path: Path) -> None:
    log = DurableLog(tmp_path)
    log.create_topic("t", 2)
    offsets = log.append(
        [
            Append("t", 0, b"k", b"v0", 10),
            Append("t", 1, None, b"w0", 11),
            Append("t", 0, b"k", b"v1", 12, (("h", b"x"),)),
        ]
    )
    assert offsets == [0, 0, 1]
    log.commit("g", {("t", 0): 1}, {"cp": b"state"})
    log.close()

    log = DurableLog(tmp_path)
    assert log.topics() == {"t": 2}
    assert log.highwater("t", 0) == 2 and log.highwater("t", 1) == 1
    records = log.read("t", 0, 1, 10)
    assert [(r.offset, r.key, r.value, r.timestamp, r.headers) for r in records] == [
        (1, b"k", b"v1", 12, (("h", b"x"),))
    ]
    assert log.committed("g", "t", 0) == 1 and log.committed("g", "t", 1) is None
    assert log.blob("cp") == b"state"
    assert log.append([Append("t", 0, None, b"v2", 13)]) == [2]
    log.close()


def test_trim_keeps_offsets_monotonic(tmp_path: Path) -> None:
    log = DurableLog(tmp_path)
    log.create_topic("t", 1)
    log.append([Append("t", 0, None, str(i).encode(), i) for i in range(5)])
    log.trim("t", 0, 3)
    assert log.earliest("t", 0) == 3
    assert [r.offset for r in log.read("t", 0, 0, 10)] == [3, 4]
    log.close()
    log = DurableLog(tmp_path)
    assert log.highwater("t", 0) == 5
    log.close()


def test_errors_name_the_problem(tmp_path: Path) -> None:
    log = DurableLog(tmp_path)
    log.create_topic("t", 2)
    assert log.create_topic("t", 2) is False
    with pytest.raises(TopicExists, match="topic 't' exists with 2 partitions, not 3"):
        log.create_topic("t", 3)
    with pytest.raises(UnknownTopic):
        log.append([Append("nope", 0, None, b"", 0)])
    with pytest.raises(ValueError, match="topic 't' has 2 partitions, no partition 2"):
        log.read("t", 2, 0, 1)
    log.close()

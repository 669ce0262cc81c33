"""Gaps in devices' sequence numbers: what counts as lost, and the gateway's alert."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.ingest import PayloadError
from connectors.mqtt.payload import decode_payload
from engine.contracts.alerts import AlertEvent
from engine.evaluation.sequence_gaps import RULE_ID, SequenceGapAlerts, SequenceTracker


def _lost(seqs: list[int], reorder: int = 16) -> int:
    tracker = SequenceTracker(reorder=reorder, reorder_wait_ms=10**12)
    return sum(tracker.observe("d", s, 0) for s in seqs)


def test_a_skipped_number_is_lost_once_the_window_has_passed_it() -> None:
    tracker = SequenceTracker(reorder=16, reorder_wait_ms=10**12)
    seqs = [n for n in range(1, 101) if n != 10]
    lost = [tracker.observe("d", s, 0) for s in seqs]
    assert sum(lost) == 1
    assert lost.index(1) == seqs.index(26)  # 16 numbers above 10 have arrived
    assert tracker.counts["d"].lost == 1


def test_a_jump_counts_every_number_skipped() -> None:
    assert _lost([1, 2, 100, *range(101, 130)]) == 97


def test_duplicates_and_reordering_within_the_window_lose_nothing() -> None:
    seqs = list(range(1, 201))
    rng = random.Random(7)
    for i in range(0, 190, 8):  # shuffle within blocks of 8 (< the window of 16)
        block = seqs[i : i + 8]
        rng.shuffle(block)
        seqs[i : i + 8] = block
    seqs += [5, 150, 199, 200]  # the broker's redeliveries, from up to 2048 back
    tracker = SequenceTracker(reorder=16, reorder_wait_ms=10**12)
    assert sum(tracker.observe("d", s, 0) for s in seqs) == 0
    assert tracker.counts["d"].duplicates == 4


def test_a_restart_or_a_wrap_starts_a_new_run() -> None:
    tracker = SequenceTracker(reorder=16, reorder_wait_ms=10**12)
    seqs = [*range(1, 3001), *range(1, 51), *range(40, 60)]  # a restart, then dups
    assert sum(tracker.observe("d", s, 0) for s in seqs) == 0
    assert (tracker.counts["d"].restarts, tracker.counts["d"].duplicates) == (1, 11)
    wrap = SequenceTracker(reorder=16, reorder_wait_ms=10**12)
    seqs = [*range(65000, 65536), *range(0, 30)]  # a 16-bit counter wraps
    assert sum(wrap.observe("d", s, 0) for s in seqs) == 0
    assert wrap.counts["d"].restarts == 1
    # A device that restarts early repeats numbers it sent: duplicates, no loss.
    early = SequenceTracker(reorder=16, reorder_wait_ms=10**12)
    assert sum(early.observe("d", s, 0) for s in [*range(1, 40), *range(1, 80)]) == 0
    assert early.counts["d"].duplicates == 39


def test_devices_are_numbered_apart() -> None:
    tracker = SequenceTracker(reorder=4, reorder_wait_ms=10**12)
    lost = 0
    for n in range(1, 40):
        lost += tracker.observe("a", n, 0)
        if n != 20:
            lost += tracker.observe("b", n, 0)
    assert lost == 1 and tracker.counts["b"].lost == 1 and tracker.counts["a"].lost == 0


def test_a_slow_device_is_not_held_for_the_window_of_numbers() -> None:
    tracker = SequenceTracker(reorder=16, reorder_wait_ms=60_000)
    for n, at in ((1, 0), (2, 3_600_000), (4, 7_200_000)):  # hourly; 3 never comes
        assert tracker.observe("d", n, at) == 0
    assert tracker.expire(7_200_000 + 59_999) == {}
    assert tracker.expire(7_200_000 + 60_000) == {"d": 1}
    assert tracker.observe("d", 3, 7_300_000) == 0  # too late: already counted, not again
    assert tracker.counts["d"].lost == 1


@given(
    st.lists(st.integers(1, 300), min_size=0, max_size=40, unique=True),
    st.randoms(use_true_random=False),
)
def test_lost_equals_the_numbers_never_sent(dropped: list[int], rng: random.Random) -> None:
    """Whatever is dropped, and however the rest is reordered within the window and
    duplicated, the count is exactly the numbers that never arrived (once the window
    has passed them: the device goes on to 320)."""
    sent = [n for n in range(1, 321) if n not in set(dropped)]
    out = list(sent)
    for i in range(0, len(out), 5):
        block = out[i : i + 5]
        rng.shuffle(block)
        out[i : i + 5] = block
    for _ in range(10):
        k = rng.randrange(len(out))
        out.insert(min(len(out), k + rng.randrange(3)), out[k])
    # Numbers missing below the first one received are not known to have been sent.
    lost = sum(1 for n in dropped if out[0] < n <= 320 - 16)
    assert _lost(out, reorder=16) == lost


def test_the_payload_seq_is_decoded_and_a_bad_one_rejected() -> None:
    seqs: list[int] = []
    body = b'[{"value": 1, "ts": 1719763200000, "seq": 7}, {"value": 2, "seq": 8}]'
    assert len(decode_payload(body, 1719763200000, seqs)) == 2
    assert seqs == [7, 8]
    for bad in (b'"x"', b"-1", b"1.5", b"true", b"18446744073709551616"):
        with pytest.raises(PayloadError, match="seq must be an integer from 0 to "):
            decode_payload(b'{"value": 1, "seq": ' + bad + b"}", 0, [])


def test_the_alert_fires_at_the_threshold_and_resolves_after_the_window() -> None:
    now = [1_000_000]
    sent: list[AlertEvent] = []

    async def send(events: list[AlertEvent]) -> None:
        sent.extend(events)

    lost_counter: list[int] = []
    alerts = SequenceGapAlerts(
        gateway="gw",
        send=send,
        threshold=3,
        window_ms=600_000,
        reorder=4,
        on_lost=lambda connector, n: lost_counter.append(n),
        clock=lambda: now[0],
    )

    async def run() -> None:
        alerts.observe("vigil/A/level", [1, 2, 4, 5, 6, 7, 8, 9], now[0])  # 3 lost
        await alerts.check()
        assert sent == [] and lost_counter == [1]  # 1 < 3
        alerts.observe("vigil/B/level", [1, 4, 5, 6, 7, 8], now[0])  # 2, 3 lost
        await alerts.check()
        assert len(sent) == 1
        event = sent[0]
        assert (event.rule_id, event.station, event.level, event.value) == (
            RULE_ID, "gw", "yellow", 3.0,
        )  # fmt: skip
        assert event.labels["devices"] == "vigil/B/level: 2, vigil/A/level: 1"
        now[0] += 600_000
        await alerts.check()
        assert [e.level for e in sent] == ["yellow", "none"]
        assert not alerts.firing

    asyncio.run(run())
    assert alerts.totals() == {"devices": 2, "lost": 3, "duplicates": 0, "restarts": 0}


def test_a_restart_loses_what_its_last_run_still_missed() -> None:
    tracker = SequenceTracker(reorder=16, reorder_wait_ms=10**12)
    seqs = [*range(1, 2999), 3000, 1, 2]  # 2999 missing, then the device restarts
    assert sum(tracker.observe("d", s, 0) for s in seqs) == 1
    assert tracker.counts["d"].restarts == 1
    assert tracker.expire(10**13) == {}


def test_sl651_report_serials_are_followed_and_keep_alives_are_not() -> None:
    from collections import Counter as Tally
    from datetime import datetime, timedelta

    from connectors.fieldsession import Identity, Peer
    from connectors.sl651.server import Sl651Session
    from simulators.sl651_rtu import Sl651Rtu

    keep_alive = bytes.fromhex("7e7e011090330853a0002f000802009f26020209410003bde3")  # FACTS V1
    ids = {"0012345678": Identity("SK01", "1234"), "1090330853": Identity("SK09", "A000")}
    heard: list[tuple[str, list[int]]] = []
    session = Sl651Session(lambda: ids, Tally(), on_sequence=lambda d, s, _: heard.append((d, s)))
    rtu, tracker = Sl651Rtu(), SequenceTracker(reorder=4, reorder_wait_ms=10**12)
    start = datetime(2024, 7, 1)
    for i in range(20):
        frames = rtu.report(start + i * timedelta(minutes=5))
        if i == 7:  # serial 8 lost on the way
            continue
        for raw in frames:
            session.handle(raw, Peer("sl651", "127.0.0.1:4000"), 0)
    session.handle(keep_alive, Peer("sl651", "127.0.0.1:4001"), 0)
    assert {d for d, _ in heard} == {"SK01 (SL 651 0012345678)"}
    serials = [s for _, batch in heard for s in batch]
    assert serials == [n for n in range(1, 21) if n != 8]
    assert sum(tracker.observe("SK01", s, 0) for s in serials) == 1

"""``OffsetFence``: Vigil's topics are delivered in offset order across rebalances."""

from __future__ import annotations

from engine.runtime.kafka.fence import OffsetFence, Verdict

TP = ("vigil-telemetry", 3)
OTHER = ("vigil-telemetry", 4)


def _deliver_all(fence: OffsetFence, tp: object, offsets: list[int]) -> list[Verdict]:
    return [fence.admit(tp, o) for o in offsets]


def test_records_from_the_committed_offset_on_are_delivered() -> None:
    fence = OffsetFence()
    fence.positioned({TP: 10})
    assert _deliver_all(fence, TP, [10, 11, 12]) == [Verdict.DELIVER] * 3
    assert fence.expected[TP] == 13


def test_a_record_ahead_of_the_expected_offset_rewinds_once_then_waits() -> None:
    fence = OffsetFence()
    fence.positioned({TP: 10})
    assert fence.admit(TP, 14) is Verdict.REWIND  # stale, from before the rebalance
    fence.rewound(TP)
    assert fence.admit(TP, 10) is Verdict.DELIVER  # the re-fetch from the rewind
    assert fence.admit(TP, 11) is Verdict.DELIVER
    assert fence.holes == {}


def test_a_hole_is_delivered_across_after_the_rewind_confirms_it() -> None:
    fence = OffsetFence()
    fence.positioned({TP: 5})
    assert fence.admit(TP, 8) is Verdict.REWIND
    fence.rewound(TP)
    assert fence.admit(TP, 8) is Verdict.HOLE  # still first after the rewind: 5..7 gone
    assert fence.holes == {TP: (5, 7)}
    assert fence.admit(TP, 9) is Verdict.DELIVER
    # A later skip ahead is a new question, not the old hole.
    assert fence.admit(TP, 12) is Verdict.REWIND


def test_records_of_a_partition_not_yet_positioned_are_dropped() -> None:
    fence = OffsetFence()
    assert fence.admit(TP, 0) is Verdict.DROP
    fence.positioned({TP: 7, OTHER: None})
    assert fence.admit(TP, 7) is Verdict.DELIVER
    fence.revoked([TP])
    assert fence.admit(TP, 8) is Verdict.DROP  # between revocation and the next seek
    assert fence.admit(OTHER, 3) is Verdict.DELIVER


def test_without_a_committed_offset_the_first_record_sets_the_order() -> None:
    fence = OffsetFence()
    fence.positioned({TP: None})
    assert fence.admit(TP, 42) is Verdict.DELIVER
    assert fence.admit(TP, 44) is Verdict.REWIND


def test_a_seek_moves_the_expected_offset_and_redeliveries_pass() -> None:
    fence = OffsetFence()
    fence.positioned({TP: 20})
    assert _deliver_all(fence, TP, [20, 21, 22]) == [Verdict.DELIVER] * 3
    fence.seeked(TP, 21)  # the topology rewinds to its state's next offset
    assert fence.admit(TP, 23) is Verdict.REWIND
    fence.rewound(TP)
    assert fence.admit(TP, 21) is Verdict.DELIVER
    # An offset below the expected one (a redelivery) passes; the processor skips it.
    assert fence.admit(TP, 20) is Verdict.DELIVER
    assert fence.expected[TP] == 22


def test_a_new_positioning_forgets_the_old_generation() -> None:
    fence = OffsetFence()
    fence.positioned({TP: 10})
    assert fence.admit(TP, 15) is Verdict.REWIND
    fence.rewound(TP)
    fence.positioned({TP: 12})
    assert fence.admit(TP, 15) is Verdict.REWIND  # not taken for a confirmed hole


def test_a_record_whose_delivery_did_not_complete_is_expected_again() -> None:
    # A rebalance: the partition is positioned at its committed offset 78, the record
    # at 78 is admitted, and its delivery is cancelled (the flow still suspended).
    fence = OffsetFence()
    fence.positioned({TP: 78})
    assert fence.admit(TP, 78) is Verdict.DELIVER
    assert fence.undelivered(TP, 78)  # the consumer is to seek back to 78
    assert fence.expected[TP] == 78
    # Records after it, still in the fetch, are not delivered before it.
    assert fence.admit(TP, 79) is Verdict.REWIND
    fence.rewound(TP)
    assert _deliver_all(fence, TP, [78, 79]) == [Verdict.DELIVER] * 2
    assert fence.holes == {}


def test_an_undelivered_record_is_never_taken_for_a_hole() -> None:
    fence = OffsetFence()
    fence.positioned({TP: 5})
    assert fence.admit(TP, 7) is Verdict.REWIND
    fence.rewound(TP)
    assert fence.admit(TP, 5) is Verdict.DELIVER  # the first record since the rewind...
    assert fence.undelivered(TP, 5)  # ...whose delivery was cancelled
    # 5 is in the log: a record beyond it first is stale, not the far side of a hole.
    assert fence.admit(TP, 6) is Verdict.REWIND
    assert fence.holes == {}


def test_an_undelivered_repeat_or_revoked_record_needs_no_rewind() -> None:
    fence = OffsetFence()
    fence.positioned({TP: 10})
    assert _deliver_all(fence, TP, [10, 11]) == [Verdict.DELIVER] * 2
    assert fence.admit(TP, 10) is Verdict.DELIVER  # a repeat of one delivered
    assert not fence.undelivered(TP, 10)
    assert fence.expected[TP] == 12
    assert fence.admit(TP, 12) is Verdict.DELIVER
    fence.revoked([TP])  # the delivery was cancelled by the revocation
    assert not fence.undelivered(TP, 12)
    assert TP not in fence.expected
    assert fence.admit(OTHER, 3) is Verdict.DROP
    assert not fence.undelivered(OTHER, 3)


def test_records_dropped_while_positioning_are_fetched_again() -> None:
    # A fetch from the committed offset answered after the seek, but read before the
    # fence knew where the partition stood: dropped, so it must be fetched again.
    fence = OffsetFence()
    fence.positioning()
    assert fence.admit(TP, 30) is Verdict.DROP
    assert fence.admit(TP, 31) is Verdict.DROP
    assert fence.positioned({TP: 30, OTHER: 12}) == {TP}
    assert fence.admit(TP, 32) is Verdict.REWIND  # what the fetch still held
    fence.rewound(TP)
    assert _deliver_all(fence, TP, [30, 31, 32]) == [Verdict.DELIVER] * 3
    # Drops before the positioning began are the last generation's: none to redo.
    fence.revoked([TP])
    assert fence.admit(TP, 33) is Verdict.DROP
    fence.positioning()
    assert fence.positioned({TP: 33}) == set()


def test_a_partition_without_a_committed_offset_is_not_sought_again() -> None:
    fence = OffsetFence()
    fence.positioning()
    assert fence.admit(TP, 0) is Verdict.DROP
    assert fence.positioned({TP: None}) == set()

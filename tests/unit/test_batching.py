from __future__ import annotations

from streams.worker.batching import OffsetWatch


def test_consecutive_offsets_and_redeliveries_are_not_gaps() -> None:
    w = OffsetWatch()
    assert w.check("p0", 12, generation=1, committed=12) is None  # the assignment sought to 12
    assert w.check("p0", 13, generation=1, committed=12) is None
    assert w.check("p0", 15, generation=1, committed=12) is None  # one offset: a transaction marker
    assert w.check("p0", 10, generation=1, committed=12) is None  # a re-delivery after a seek back
    assert w.check("p1", 7, generation=1, committed=None) is None  # nothing committed: no expectation


def test_a_message_past_the_expected_offset_reports_what_was_skipped() -> None:
    w = OffsetWatch()
    assert w.check("p0", 20, generation=3, committed=12) == (12, 8)  # 12-19 never reached the agent
    assert w.check("p0", 21, generation=3, committed=12) is None
    assert w.check("p0", 30, generation=3, committed=12) == (22, 8)


def test_a_new_generation_starts_from_the_committed_offset_again() -> None:
    w = OffsetWatch()
    assert w.check("p0", 40, generation=1, committed=40) is None
    assert w.check("p0", 25, generation=2, committed=25) is None  # a rebalance sought back to 25
    assert w.check("p0", 26, generation=2, committed=25) is None
    assert w.check("p0", 40, generation=3, committed=27) == (27, 13)

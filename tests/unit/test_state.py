from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_core.config import EventWeights, FoldInConfig
from model_core.events import Event, EventType
from model_core.state import UserHistory

W = EventWeights()


def ev(item: str, t: float, kind: EventType = EventType.VIEW, eid: str | None = None) -> Event:
    return Event("u", item, kind, t, event_id=eid)


def test_time_decay_halves_weight_after_one_half_life() -> None:
    cfg = FoldInConfig(half_life_s=100.0, position_decay=1.0)
    h = UserHistory("u")
    h.add(ev("a", 0.0), W, cfg)
    h.add(ev("b", 100.0), W, cfg)
    items, weights = h.weighted_items(cfg)
    assert items == ["b", "a"]
    assert weights == pytest.approx([1.0, 0.5])


def test_repeated_item_accumulates_decayed_weight_and_moves_to_front() -> None:
    cfg = FoldInConfig(half_life_s=10.0, position_decay=1.0)
    h = UserHistory("u")
    h.add(ev("a", 0.0), W, cfg)
    h.add(ev("b", 5.0), W, cfg)
    h.add(ev("a", 10.0, EventType.PURCHASE), W, cfg)
    items, weights = h.weighted_items(cfg)
    assert items == ["a", "b"]
    assert weights[0] == pytest.approx(0.5 + 5.0)
    assert weights[1] == pytest.approx(0.5**0.5)
    assert h.purchased == ["a"]


def test_out_of_order_event_is_decayed_to_the_item_time() -> None:
    cfg = FoldInConfig(half_life_s=10.0, position_decay=1.0)
    h = UserHistory("u")
    h.add(ev("a", 20.0), W, cfg)
    h.add(ev("a", 10.0), W, cfg)
    assert h.weighted_items(cfg)[1] == pytest.approx([1.5])
    assert h.last_event_time == 20.0


def test_position_decay_and_no_time_decay() -> None:
    cfg = FoldInConfig(half_life_s=0.0, position_decay=0.5)
    h = UserHistory("u")
    for i, item in enumerate("abc"):
        h.add(ev(item, 1000.0 * i), W, cfg)
    assert h.weighted_items(cfg) == (["c", "b", "a"], pytest.approx([1.0, 0.5, 0.25]))


def test_history_is_bounded_to_the_newest_distinct_items() -> None:
    cfg = FoldInConfig(history_size=3)
    h = UserHistory("u")
    for i, item in enumerate("abcdab"):
        h.add(ev(item, float(i)), W, cfg)
    assert list(h.entries) == ["d", "a", "b"]
    assert h.events_applied == 6


def test_replayed_event_id_is_applied_once() -> None:
    cfg = FoldInConfig()
    h = UserHistory("u")
    assert h.add(ev("a", 1.0, eid="e1"), W, cfg)
    before = h.to_dict()
    assert not h.add(ev("a", 1.0, eid="e1"), W, cfg)
    assert h.to_dict() == before
    assert h.events_applied == 1 and h.last_event_id == "e1"


def test_exclude_covers_history_and_purchases() -> None:
    cfg = FoldInConfig(history_size=1)
    h = UserHistory("u")
    h.add(ev("a", 1.0, EventType.PURCHASE), W, cfg)
    h.add(ev("b", 2.0), W, cfg)
    assert h.exclude() == {"a", "b"}


events = st.lists(
    st.tuples(st.sampled_from("abcdefg"), st.floats(0, 1e6), st.sampled_from(list(EventType)),
              st.one_of(st.none(), st.text(min_size=1, max_size=4))),
    max_size=30,
)


@settings(max_examples=50, deadline=None)
@given(events)
def test_dict_round_trip(rows: list) -> None:
    cfg = FoldInConfig(history_size=4)
    h = UserHistory("u")
    for item, t, kind, eid in rows:
        h.add(ev(item, t, kind, eid), W, cfg)
    back = UserHistory.decode("u", h.encode())
    assert back.to_dict() == h.to_dict()
    assert back.weighted_items(cfg) == h.weighted_items(cfg)


def test_position_skips_redelivered_messages_without_event_ids() -> None:
    cfg = FoldInConfig()
    h = UserHistory("u")
    assert h.add(ev("a", 1.0), W, cfg, (0, 10))
    assert h.add(ev("b", 2.0), W, cfg, (0, 11))
    assert not h.add(ev("a", 1.0), W, cfg, (0, 10))  # re-delivered after a crash: nothing changes
    assert not h.add(ev("b", 2.0), W, cfg, (0, 11))
    assert h.add(ev("c", 3.0), W, cfg, (0, 12))
    assert h.events_applied == 3 and h.position == (0, 12)
    # another partition (topic re-partitioned): offsets are not comparable, so it is applied
    assert h.add(ev("d", 4.0), W, cfg, (3, 5))
    assert h.events_applied == 4 and h.position == (3, 5)


def test_producer_duplicates_are_caught_by_event_id_within_the_window() -> None:
    from model_core.state import DEDUPE_WINDOW

    cfg = FoldInConfig()
    h = UserHistory("u")
    assert h.add(ev("a", 1.0, eid="e0"), W, cfg, (0, 0))
    assert not h.add(ev("a", 1.0, eid="e0"), W, cfg, (0, 1))  # the same event sent twice
    for j in range(1, DEDUPE_WINDOW + 1):
        assert h.add(ev("b", 1.0 + j, eid=f"e{j}"), W, cfg, (0, 1 + j))
    assert h.add(ev("a", 1.0, eid="e0"), W, cfg, (0, 100))  # out of the window: bounded memory


def test_changelog_value_stays_small() -> None:
    """A full history (50 items) with many events: about 2 kB, however many events were applied."""
    cfg = FoldInConfig()
    h = UserHistory("u")
    for j in range(2000):
        h.add(ev(f"item-{j % 80}", 1_700_000_000.0 + j, eid=f"event-{j:08d}"), W, cfg, (1, j))
    assert len(h.encode()) < 2500
    back = UserHistory.decode("u", h.encode())
    assert back.position == (1, 1999) and back.events_applied == 2000 and back.to_dict() == h.to_dict()

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import pytest

from model_core.errors import ConfigError
from model_core.events import Event, EventType
from model_core.offline.evaluate import _Catalog, _Score, _score_stream, hit_rank, prequential
from model_core.reco import BaseRecommender, Ranked


class Fixed(BaseRecommender):
    """A hand-made model: recommends a fixed list, records what it learned and was asked."""

    def __init__(self, ranked: list[str]) -> None:
        self.ranked = ranked
        self.asked: list[tuple[str, frozenset[str]]] = []
        self.learned: list[str] = []

    def recommend(
        self, users: Sequence[str], k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[Ranked]:
        ex = exclude if exclude is not None else [()] * len(users)
        for u, x in zip(users, ex):
            self.asked.append((u, frozenset(x)))
        return [[(i, 1.0) for i in self.ranked if i not in x][:k] for x in ex]

    def learn(self, events: Sequence[Event]) -> None:
        self.learned.extend(ev.item_id for ev in events)


def e(user: str, item: str, t: float, kind: EventType = EventType.VIEW) -> Event:
    return Event(user, item, kind, t)


def test_metrics_on_a_tiny_hand_checked_log() -> None:
    train = [e("a", "x", 1), e("b", "x", 2)]
    test = [
        e("a", "y", 3),                      # eval point: ranked [y, z, w] minus {x} -> rank 0
        e("a", "x", 4),                      # item already seen by a -> not evaluated
        e("c", "z", 5),                      # c has no earlier event -> not evaluated
        e("c", "w", 6, EventType.PURCHASE),  # eval: exclude {z}: [x, y, w] -> rank 2
        e("b", "q", 7),                      # eval: miss
    ]
    model = Fixed(["x", "y", "z", "w"])
    scores = {"m": _Score()}
    _score_stream(train, test, {"m": model}, scores, k=3)
    s = scores["m"]
    assert s.points == 3 and s.p_points == 1
    assert s.hits == 2 and s.p_hits == 1
    assert s.ndcg == pytest.approx(1.0 + 1.0 / math.log2(4))
    assert s.rr == pytest.approx(1.0 + 1.0 / 3)
    # lists are published (asked for) at the split for known users, then after each moment
    # for its users, excluding what they saw by then; the points meet the last one published
    assert model.asked == [("a", frozenset({"x"})), ("b", frozenset({"x"})), ("a", frozenset({"x", "y"})),
                           ("a", frozenset({"x", "y"})), ("c", frozenset({"z"})), ("c", frozenset({"z", "w"})),
                           ("b", frozenset({"x", "q"}))]
    assert model.learned == ["y", "x", "z", "w", "q"]  # learns every test event, after scoring
    r = s.report(len(test))
    assert r["hr"] == pytest.approx(2 / 3) and r["purchase_hr"] == 1.0
    assert r["mrr"] == pytest.approx((1 + 1 / 3) / 3)
    # lists given: [y, z, w], [x, y, w], [y, z, w] over the catalog {x, y, z, w, q}
    assert s.exposure == {"y": 3, "z": 2, "w": 3, "x": 1}
    cat = _Catalog.of(train, test)
    extra = s.report(len(test), cat)
    assert extra["coverage"] == pytest.approx(4 / 5)
    # Gini of sorted exposure [0, 1, 2, 3, 3]: sum((2i - n - 1) x_i) / (n * sum x)
    assert extra["gini"] == pytest.approx((-2 * 1 + 0 * 2 + 2 * 3 + 4 * 3) / (5 * 9), abs=1e-6)
    # training counts: x 2, others 0 -> percentiles x 1.0, the rest 0.0
    assert extra["pop_percentile"] == pytest.approx(1 / 9, abs=1e-6)


def test_hit_rank() -> None:
    assert hit_rank(["a", "b"], "b") == 1
    assert hit_rank(["a", "b"], "c") is None


def test_bad_arguments_are_config_errors() -> None:
    evs = [e("a", "x", 1), e("a", "y", 2)]
    with pytest.raises(ConfigError, match="unknown model"):
        prequential(evs, models=["nope"])
    with pytest.raises(ConfigError, match="train_fraction"):
        prequential(evs, train_fraction=1.5)



def test_events_that_happen_together_meet_the_list_from_before_them() -> None:
    """The items of one order (same time) all meet the list published before the order."""

    class Successor(Fixed):
        """After learning an item, recommends the item that follows it in ``nxt``."""

        nxt = {"y": "z", "z": "w"}

        def recommend(self, users: Sequence[str], k: int,
                      exclude: Sequence[Collection[str]] | None = None) -> list[Ranked]:
            ex = exclude if exclude is not None else [()] * len(users)
            return [[(self.nxt[i], 1.0) for i in self.learned if i in self.nxt and self.nxt[i] not in x][:k]
                    for x in ex]

    model = Successor([])
    test = [e("a", "y", 5, EventType.PURCHASE), e("a", "z", 5, EventType.PURCHASE), e("a", "w", 6)]
    scores = {"m": _Score(per_point=[])}
    _score_stream([e("a", "x", 1)], test, {"m": model}, scores, k=3, window_s=0.005)
    # per event, learning y first would have put z in a's list; here only w (after the order) hits
    assert scores["m"].per_point == [False, False, True]
    assert model.learned == ["y", "z", "w"]

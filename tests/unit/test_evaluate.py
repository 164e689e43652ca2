from __future__ import annotations

import math

import pytest

from model_core.errors import ConfigError
from model_core.offline.evaluate import _Score, _score_stream, hit_rank, prequential
from model_core.events import Event, EventType


class Fixed:
    """A hand-made model: recommends a fixed list, records what it learned and was asked."""

    def __init__(self, ranked: list[str]) -> None:
        self.ranked = ranked
        self.asked: list[tuple[str, frozenset[str]]] = []
        self.learned: list[str] = []

    def recommend(self, user_id: str, k: int, exclude: set[str]) -> list[str]:
        self.asked.append((user_id, frozenset(exclude)))
        return [i for i in self.ranked if i not in exclude][:k]

    def learn(self, event: Event) -> None:
        self.learned.append(event.item_id)


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
    assert model.asked == [("a", frozenset({"x"})), ("c", frozenset({"z"})), ("b", frozenset({"x"}))]
    assert model.learned == ["y", "x", "z", "w", "q"]  # learns every test event, after scoring
    r = s.report(len(test))
    assert r["hr"] == pytest.approx(2 / 3) and r["purchase_hr"] == 1.0
    assert r["mrr"] == pytest.approx((1 + 1 / 3) / 3)


def test_hit_rank() -> None:
    assert hit_rank(["a", "b"], "b") == 1
    assert hit_rank(["a", "b"], "c") is None


def test_bad_arguments_are_config_errors() -> None:
    evs = [e("a", "x", 1), e("a", "y", 2)]
    with pytest.raises(ConfigError, match="unknown model"):
        prequential(evs, models=["nope"])
    with pytest.raises(ConfigError, match="train_fraction"):
        prequential(evs, train_fraction=1.5)

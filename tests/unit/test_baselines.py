"""Baselines on tiny hand-checked logs: sequential rules (SR) and session kNN (V-SKNN)."""

from __future__ import annotations

import pytest

from model_core.baselines import SequentialRules, SessionKNN, Trending
from model_core.events import Event, EventType


def clicks(user: str, items: str, t0: float = 0.0, session: str | None = None) -> list[Event]:
    return [Event(user, i, EventType.VIEW, t0 + 10 * j, session_id=session) for j, i in enumerate(items.split())]


def test_sr_rules_are_directional_and_weighted_by_one_over_gap() -> None:
    sr = SequentialRules(steps=3)
    sr.learn(clicks("u", "a b c"))
    assert sr.rules == {"a": {"b": 1.0, "c": 0.5}, "b": {"c": 1.0}}  # nothing points back
    sr.learn(clicks("v", "a c", t0=100))
    assert sr.rules["a"] == {"b": 1.0, "c": 1.5}
    # a user whose last item is a gets c (1.5) before b (1.0); the history is excluded
    [lst] = sr.recommend(["v2"], 2)  # unknown user: trending only
    sr.learn(clicks("w", "a", t0=200))
    [lst] = sr.recommend(["w"], 2, [{"a"}])
    assert lst == [("c", 1.5), ("b", 1.0)]


def test_sr_does_not_link_across_sessions() -> None:
    sr = SequentialRules(session_gap_s=60)
    sr.learn(clicks("u", "a b") + clicks("u", "c", t0=1000))  # c comes after a long gap
    assert sr.rules == {"a": {"b": 1.0}}
    sr.learn(clicks("u", "d", t0=1005, session="s2"))  # a new session id also cuts
    assert "c" not in sr.rules


def test_sr_prunes_the_weaker_half_of_an_item_with_too_many_rules() -> None:
    sr = SequentialRules(max_rules=4)
    for j, item in enumerate(["b", "c", "d", "e", "f"]):
        sr.learn([Event(f"u{j}", "a", EventType.VIEW, 0.0)] + [Event(f"u{j}", item, EventType.VIEW, 1.0)] * (j + 1))
    assert len(sr.rules["a"]) <= 4 and "f" in sr.rules["a"] and "b" not in sr.rules["a"]


def test_vsknn_votes_with_similarity_over_distance() -> None:
    knn = SessionKNN(neighbours=10, sample_size=10)
    knn.learn(clicks("s1", "a b c"))  # shares a and b with the query
    knn.learn(clicks("s2", "x b y", t0=100))  # shares b only
    knn.learn(clicks("q", "a b", t0=200))
    scores = knn._scores("q")
    # query weights: b (newest) 1, a 1/2. s1: sim 1.5, match b at 1, votes c 1.5/1 (a is in the query)
    # s2: sim 1.0, match b at 1, votes x 1/1 and y 1/1
    assert scores["c"] == pytest.approx(1.5)
    assert scores["x"] == pytest.approx(1.0) and scores["y"] == pytest.approx(1.0)
    [lst] = knn.recommend(["q"], 3, [{"a", "b"}])
    assert lst[0] == ("c", pytest.approx(1.5))


def test_vsknn_samples_only_the_most_recent_sessions() -> None:
    knn = SessionKNN(neighbours=10, sample_size=2)  # item a remembers its 2 latest sessions: new, q
    knn.learn(clicks("old", "a z"))
    knn.learn(clicks("new", "a y", t0=100))
    knn.learn(clicks("q", "a", t0=200))
    assert set(knn._scores("q")) == {"y"}


def test_every_baseline_tops_up_with_trending_and_honours_exclusions() -> None:
    for model in (SequentialRules(), SessionKNN(), Trending()):
        model.learn(clicks("u", "a b c"))
        [lst] = model.recommend(["someone"], 5, [{"a"}])
        assert [i for i, _ in lst] and "a" not in [i for i, _ in lst]


def test_trending_stays_finite_for_events_far_out_of_time_order() -> None:
    t = Trending()
    t.learn([Event("u", "a", EventType.VIEW, tm) for tm in (1.7e9, 1e11, 1.7e9, -1e11, 1e11 + 1)])
    [lst] = t.recommend(["x"], 1)
    assert lst[0][0] == "a" and lst[0][1] > 0

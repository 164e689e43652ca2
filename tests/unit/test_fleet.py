"""The served model replayed as a fleet serves it (``model_core.offline.fleet``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from model_core.config import EventWeights, FoldInConfig
from model_core.errors import ConfigError
from model_core.events import Event, EventType
from model_core.offline.evaluate import prequential
from model_core.offline.fleet import Deployment, ServedFleet, murmur2, partition_of
from model_core.offline.synth import SynthConfig, generate_events
from model_core.served.model import ServedModel, Step
from model_core.served.shared import ItemDelta
from model_core.state import UserHistory


def test_murmur2_is_kafkas() -> None:
    # vectors from Apache Kafka's UtilsTest.testMurmur2
    cases = {"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
             "a-little-bit-longer-string": -1486304829, "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
             "abc": 479470107}
    for text, expected in cases.items():
        assert murmur2(text.encode()) == expected


@given(st.binary(max_size=64))
def test_murmur2_matches_the_client_partitioner(data: bytes) -> None:
    assert murmur2(data) & 0x7FFFFFFF == aiokafka_murmur2(data) & 0x7FFFFFFF


class Recorder:
    """Stands in for ServedModel: records each step's events, lists the user's last item."""

    made = 0

    def __init__(self) -> None:
        Recorder.made += 1
        self.steps: list[list[str]] = []

    def apply(self, h: UserHistory, ev: Event, position: tuple[int, int] | None = None) -> bool:
        return h.add(ev, EventWeights(), FoldInConfig(), position)

    def plan_step(self, events: Sequence[Event], histories: Mapping[str, UserHistory], k: int = 20) -> Step:
        self.steps.append([f"{ev.user_id}:{ev.item_id}" for ev in events])
        return Step([[(f"after-{len(self.steps)}", 1.0)] for _ in histories], [], ItemDelta())

    def learn(self, delta: ItemDelta) -> None:
        pass


def fleet(dep: Deployment) -> tuple[ServedFleet, list[Recorder]]:
    made: list[Recorder] = []

    def make() -> ServedModel:
        made.append(Recorder())
        return cast(ServedModel, made[-1])

    return ServedFleet(make, dep), made


def ev(user: str, item: str, t: float) -> Event:
    return Event(user, item, EventType.VIEW, t)


def test_a_batch_closes_at_its_size_or_when_the_next_event_is_late() -> None:
    f, [rec] = fleet(Deployment(batch=3, within_s=1.0))
    f.arrive([ev("a", "1", 0.0), ev("a", "2", 0.5), ev("a", "3", 0.9), ev("a", "4", 1.0), ev("a", "5", 2.5)])
    assert rec.steps == [["a:1", "a:2", "a:3"], ["a:4"]]  # full at 3; 2.5 is > 1 s after 1.0
    f.flush()
    assert rec.steps[-1] == ["a:5"]
    full_speed, [r2] = fleet(Deployment(batch=2, within_s=float("inf")))
    full_speed.arrive([ev("a", str(i), 100.0 * i) for i in range(5)])
    full_speed.flush()
    assert [len(s) for s in r2.steps] == [2, 2, 1]


def test_a_batch_closes_when_time_passes_whichever_worker_the_events_go_to() -> None:
    a, b = "a", next(u for u in (f"u{i}" for i in range(100)) if partition_of(u, 2) != partition_of("a", 2))
    f, recs = fleet(Deployment(batch=10, within_s=1.0, workers=2, partitions=2, shared=False))
    f.arrive([ev(a, "1", 0.0), ev(b, "1", 0.5)])
    assert f.served(a) == []  # a's batch is still open
    f.arrive([ev(b, "2", 2.0)])  # 2 s later, though no event of a's worker came: it closed
    assert f.served(a) and f.served(b)  # b's first batch (opened at 0.5) closed too
    assert sorted(len(s) for r in recs for s in r.steps) == [1, 1]


def test_a_user_sees_the_list_published_before_the_batch_of_their_event() -> None:
    f, _ = fleet(Deployment(batch=2, within_s=10.0))
    assert f.served("a") == []
    f.arrive([ev("a", "1", 0.0)])
    assert f.served("a") == []  # the batch is still open: nothing published yet
    f.arrive([ev("a", "2", 1.0), ev("a", "3", 2.0)])
    assert f.served("a") == [("after-1", 1.0)]


def test_users_split_over_workers_as_the_partitioner_splits_them() -> None:
    users = [f"user-{i}" for i in range(200)]
    f, recs = fleet(Deployment(batch=1, workers=3, partitions=6, shared=False))
    f.arrive([ev(u, "x", float(i)) for i, u in enumerate(users)])
    f.flush()
    assert len(recs) == 3
    for w, rec in enumerate(recs):
        mine = {s.split(":")[0] for step in rec.steps for s in step}
        assert mine == {u for u in users if partition_of(u, 6) % 3 == w}
    # more workers than partitions: the extra ones own nothing
    assert len(fleet(Deployment(workers=8, partitions=4, shared=False))[1]) == 4
    assert len(fleet(Deployment(workers=8, partitions=4))[1]) == 1  # shared: one item side


def test_a_restart_keeps_histories_and_starts_the_online_state_again() -> None:
    f, made = fleet(Deployment(batch=1, workers=2, partitions=2, shared=False))
    f.arrive([ev("a", "1", 0.0), ev("b", "1", 0.1), ev("a", "2", 0.2)])
    f.restart()
    assert len(made) == 4 and all(r.steps == [] for r in made[2:])
    # "a" and "b" share partition 0: offsets 0 (a), 1 (b), 2 (a) are what the histories keep
    assert (partition_of("a", 2), partition_of("b", 2)) == (0, 0)
    assert {u: h.position for u, h in f.histories.items()} == {"a": (0, 2), "b": (0, 1)}
    assert f.served("a") and f.served("b")  # published lists stay


def test_bad_deployments_are_config_errors() -> None:
    for bad in ({"batch": 0}, {"workers": 0}, {"partitions": 0}, {"within_s": -1.0}, {"restart_at": 1.5}):
        with pytest.raises(ConfigError):
            Deployment(**bad)  # type: ignore[arg-type]


def test_evaluate_scores_a_fleet_and_a_restart_on_the_same_points() -> None:
    events = list(generate_events(SynthConfig(users=200, items=150, events=3000, seed=3)))
    fast = {"batch": 32, "within_s": float("inf")}  # backfill-sized batches keep the test short
    runs = {name: prequential(events, models=["served", "popular"], device="cpu", deployment=dep)
            for name, dep in {"one": Deployment(**fast),  # type: ignore[arg-type]
                              "three": Deployment(workers=3, restart_at=0.5, **fast)}.items()}  # type: ignore[arg-type]
    assert runs["one"]["eval_points"] == runs["three"]["eval_points"] > 100
    assert runs["three"]["deployment"]["workers"] == 3 and "3 worker(s)" in runs["three"]["served_as"]
    assert runs["three"]["deployment"]["batch_within_s"] == "inf"  # JSON has no infinity
    for r in runs.values():
        assert 0 < r["models"]["served"]["hr"] <= 1
        assert r["models"]["popular"]["hr"] == runs["one"]["models"]["popular"]["hr"]  # baselines: per event


def test_a_users_next_event_meets_the_list_of_the_batch_before_even_when_nothing_came_between() -> None:
    """The user's previous batch closed within_s after it opened, long before the next event:
    evaluate asks ``served`` after ``advance`` to the event's time, as a user would see it."""
    f, _ = fleet(Deployment(batch=10, within_s=1.0))
    f.arrive([ev("a", "1", 0.0)])
    assert f.served("a") == []  # the batch is open
    f.advance(30.0)  # the user's next event, 30 s later, nothing in between
    assert f.served("a") == [("after-1", 1.0)]


def test_evaluate_scores_a_users_next_event_against_the_list_after_their_previous_one() -> None:
    events = [ev("a", "x", 0.0), ev("a", "y", 10.0), ev("a", "z", 20.0)]
    seen: list[Any] = []

    class Fleet(ServedFleet):
        def served(self, user_id: str) -> Any:
            seen.append(super().served(user_id))
            return seen[-1]

    made: list[Recorder] = []

    def make() -> ServedModel:
        made.append(Recorder())
        return cast(ServedModel, made[-1])

    from model_core.offline.evaluate import _Score, _score_stream
    f = Fleet(make, Deployment(batch=10, within_s=1.0))
    _score_stream(events[:1], events[1:], {"served": f}, {"served": _Score()}, 20, window_s=1.0)
    assert seen == [[], [("after-1", 1.0)]]  # y met nothing yet (x was train); z met the list after y

"""The pieces of retraining that need no broker: durations, order-free interactions,
erasure, warm start, version retention and the gate's paired test."""

from __future__ import annotations

import random

import numpy as np
import pytest

from model_core.als import (
    REJECTED_DIR,
    ALSModel,
    Interactions,
    InteractionsBuilder,
    model_versions,
    prune_versions,
    train_als,
)
from model_core.config import ALSConfig
from model_core.errors import BadInputError, ConfigError
from model_core.events import Event, EventType
from model_core.offline.evaluate import GATE_Z, paired_z
from model_core.offline.synth import SynthConfig, generate_events
from streams.cli.trainer import TrainOptions, parse_duration

SMALL = SynthConfig(users=80, items=40, events=2000, clusters=3, seed=2)


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600),
                                               ("7d", 604800), ("2w", 1209600), ("0.5h", 1800)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "soon", "-1h", "0", "infd", "nan"])
def test_bad_durations_say_so(text: str) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(text)


def test_interactions_do_not_depend_on_event_order() -> None:
    events = list(generate_events(SMALL))
    shuffled = events[:]
    random.Random(0).shuffle(shuffled)
    a, b = (Interactions.from_events(e, ALSConfig()) for e in (events, shuffled))
    assert a.user_ids == b.user_ids == sorted(a.user_ids) and a.item_ids == b.item_ids == sorted(a.item_ids)
    def cells(x: Interactions) -> dict:
        return dict(zip(zip(x.rows.tolist(), x.cols.tolist()), x.weights.tolist()))

    assert cells(a) == cells(b)
    np.testing.assert_array_equal(train_als(a, ALSConfig(factors=8, iterations=3)).item_factors,
                                  train_als(b, ALSConfig(factors=8, iterations=3)).item_factors)


def test_forgetting_a_user_drops_what_came_before_only() -> None:
    b = InteractionsBuilder(ALSConfig())
    b.add(Event("u1", "a", EventType.VIEW, 1.0))
    b.add(Event("u2", "b", EventType.PURCHASE, 2.0))
    b.forget_user("u2")
    b.forget_user("never-seen")
    data = b.build()
    assert data.user_ids == ["u1"] and data.item_ids == ["a"]  # b only ever came from u2
    b.add(Event("u2", "c", EventType.VIEW, 3.0))
    data = b.build()
    assert data.user_ids == ["u1", "u2"] and data.item_ids == ["a", "c"] and data.weights.tolist() == [1.0, 1.0]
    with pytest.raises(BadInputError, match="no events"):
        empty = InteractionsBuilder(ALSConfig())
        empty.add(Event("u", "i", EventType.VIEW, 1.0))
        empty.forget_user("u")
        empty.build()


def test_warm_start_starts_from_the_previous_factors() -> None:
    events = list(generate_events(SMALL))
    cfg = ALSConfig(factors=8, iterations=6)
    prev = train_als(events, cfg)
    one = ALSConfig(factors=8, iterations=1)
    warm, cold = train_als(events, one, warm_start=prev), train_als(events, one)
    # one sweep from the previous factors stays near them; from random it is nowhere near
    def gap(m: ALSModel) -> float:
        return float(np.abs(m.item_factors - prev.item_factors).mean())

    assert gap(warm) < 0.2 * gap(cold)
    assert warm.metadata["warm_start"] == prev.version and cold.metadata["warm_start"] is None
    with pytest.raises(ConfigError, match="warm-start"):
        train_als(events, ALSConfig(factors=4, iterations=1), warm_start=prev)


def test_only_the_newest_versions_are_kept(tmp_path) -> None:
    events = list(generate_events(SMALL))
    made = [train_als(events, ALSConfig(factors=4, iterations=1)) for _ in range(4)]
    for m in made[:3]:
        m.save(tmp_path)
    made[3].save(tmp_path / REJECTED_DIR)
    assert prune_versions(tmp_path, keep=2) == [made[0].version]
    assert [p.name for p in model_versions(tmp_path)] == [m.version for m in made[1:3]]
    assert [p.name for p in model_versions(tmp_path / REJECTED_DIR)] == [made[3].version]
    with pytest.raises(ConfigError):
        prune_versions(tmp_path, keep=0)


def test_paired_test_calls_noise_equal_and_a_clear_loss_worse() -> None:
    assert paired_z([True, False] * 50, [False, True] * 50)[2] == 0.0  # 50 each way: equal
    only_old, only_new, z = paired_z([False] * 30 + [True] * 70, [True] * 100)
    assert (only_old, only_new) == (30, 0) and z > GATE_Z
    assert paired_z([True] * 10, [True] * 10) == (0, 0, 0.0)
    assert paired_z([False] * 2 + [True] * 98, [True] * 100)[2] < GATE_Z  # 2 points: too few to call it


def test_train_options_are_checked() -> None:
    with pytest.raises(ConfigError):
        TrainOptions(holdout=0)
    assert TrainOptions(holdout=0, gate=False).holdout == 0

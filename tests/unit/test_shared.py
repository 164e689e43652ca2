"""The item side as a replicated log: deltas, their wire form, replicas, snapshots (``model_core.served.shared``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_core.als import ALSModel
from model_core.config import ALSConfig
from model_core.errors import BadInputError, ModelIncompatibleError
from model_core.events import Event, EventType
from model_core.offline.fleet import Deployment, ServedFleet
from model_core.served.model import ServedModel
from model_core.served.shared import (
    ItemDelta,
    as_decoded,
    decode_delta,
    encode_delta,
    restore,
    snapshot,
    snapshot_arrays,
    user_key,
)
from model_core.served.signals import FEATURES, Examples, SignalsConfig
from model_core.state import UserHistory


@pytest.fixture()
def model() -> ALSModel:
    rng = np.random.default_rng(0)
    items = [f"i{j}" for j in range(40)]
    v = rng.normal(size=(40, 8)).astype(np.float32)
    return ALSModel(ALSConfig(factors=8), items, v, ["x"], np.zeros((1, 8), np.float32))


def stream(n_batches: int, seed: int = 1) -> list[list[Event]]:
    """Batches of events over 12 users, 40 known and 6 new items, with categories, purchases and
    session gaps."""
    rng = np.random.default_rng(seed)
    items = [f"i{j}" for j in range(40)] + [f"new{j}" for j in range(6)]
    t = 1_000_000.0
    out = []
    for _ in range(n_batches):
        batch = []
        for _ in range(int(rng.integers(1, 7))):
            t += float(rng.choice([1.0, 30.0, 4000.0], p=[0.7, 0.25, 0.05]))
            item = items[int(rng.integers(len(items)))]
            kind = EventType.PURCHASE if rng.random() < 0.1 else EventType.VIEW
            batch.append(Event(f"user-{rng.integers(12)}", item, kind, t, category=f"c{hash(item) % 3}"))
        out.append(batch)
    return out


def run(owner: ServedModel, batches: list[list[Event]], histories: dict[str, UserHistory],
        replicas: list[ServedModel]) -> list[bytes]:
    """The owner plans each batch; the delta's wire form is applied to the owner and every replica."""
    wires = []
    for batch in batches:
        touched = {}
        for ev in batch:
            h = histories.setdefault(ev.user_id, UserHistory(ev.user_id))
            if owner.apply(h, ev):
                touched[ev.user_id] = h
        wire = encode_delta(owner.plan_step(batch, touched, 10).delta)
        wires.append(wire)
        for rec in (owner, *replicas):
            rec.learn(decode_delta(wire))
    return wires


def same_lists(a: ServedModel, b: ServedModel, histories: dict[str, UserHistory]) -> None:
    hs = [histories[u] for u in sorted(histories)]
    for la, lb in zip(a.recommend(hs, 10), b.recommend(hs, 10)):
        assert [s for _, s in la] == pytest.approx([s for _, s in lb], rel=1e-6, abs=1e-9)
        distinct = [i for (i, s), (_, s2) in zip(la, la[1:] + [("", -np.inf)]) if s != s2]
        assert set(distinct) <= {i for i, _ in lb}


def test_replicas_that_apply_the_same_deltas_serve_the_same_lists(model: ALSModel) -> None:
    owner, replica = ServedModel(model, device="cpu"), ServedModel(model, device="cpu")
    histories: dict[str, UserHistory] = {}
    run(owner, stream(60), histories, [replica])
    a, b = owner.signals, replica.signals
    assert a.events == b.events > 0 and a.trained_lists == b.trained_lists > 0
    assert np.array_equal(a.w, b.w) and np.array_equal(a.hw, b.hw)  # the ranker, bit for bit
    for stat in ("trend", "count"):  # the owner also has rows for items it only looked up (all 0)
        assert {i: getattr(a, stat)[r] for i, r in a.rows.items() if a.count[r]} == \
            {i: getattr(b, stat)[r] for i, r in b.rows.items()}
    assert replica.knows("new0") and owner.knows("new0")  # new items folded in on both
    same_lists(owner, replica, histories)


def test_the_delta_as_decoded_teaches_what_its_record_teaches(model: ALSModel) -> None:
    """The worker learns its own records from memory (``as_decoded``); every other replica decodes
    them. Both must end up holding the same item side, bit for bit."""
    owner, from_memory, from_wire = (ServedModel(model, device="cpu") for _ in range(3))
    histories: dict[str, UserHistory] = {}
    for batch in stream(60, seed=3):
        touched = {}
        for ev in batch:
            h = histories.setdefault(ev.user_id, UserHistory(ev.user_id))
            if owner.apply(h, ev):
                touched[ev.user_id] = h
        delta = owner.plan_step(batch, touched, 10).delta
        wire = encode_delta(delta)
        owner.learn(decode_delta(wire))
        from_wire.learn(decode_delta(wire))
        from_memory.learn(as_decoded(delta))
    erase = owner.forget_users(["user-3"])
    from_wire.learn(decode_delta(encode_delta(erase)))
    from_memory.learn(as_decoded(erase))
    assert from_memory.signals.trained_lists == from_wire.signals.trained_lists > 0
    assert from_memory.knows("new0") and from_wire.knows("new0")
    a, b = snapshot_arrays(from_memory, 0), snapshot_arrays(from_wire, 0)
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_a_restored_snapshot_plus_the_later_deltas_is_the_replica_that_never_stopped(model: ALSModel) -> None:
    owner, steady = ServedModel(model, device="cpu"), ServedModel(model, device="cpu")
    histories: dict[str, UserHistory] = {}
    batches = stream(80, seed=2)
    run(owner, batches[:50], histories, [steady])
    data = snapshot(steady, 50)
    started = ServedModel(model, device="cpu")
    assert restore(started, data) == 50
    run(owner, batches[50:], histories, [steady, started])
    same_lists(steady, started, histories)
    assert started.signals.trained_lists == steady.signals.trained_lists
    for user in histories:  # its session records came back too: a user is not their own neighbour
        assert started.signals.sessions.own_slot(user_key(user)) == steady.signals.sessions.own_slot(user_key(user))


def test_what_is_shared_or_snapshotted_names_no_user(model: ALSModel) -> None:
    owner = ServedModel(model, device="cpu")
    histories: dict[str, UserHistory] = {}
    wires = run(owner, stream(30), histories, [])
    data = snapshot(owner, len(wires))
    assert b"user-" not in data
    assert all("user-" not in str(decode_delta(w)) for w in wires)


def test_an_erase_delta_makes_every_replica_forget_the_user(model: ALSModel) -> None:
    owner, replica = ServedModel(model, device="cpu"), ServedModel(model, device="cpu")
    histories: dict[str, UserHistory] = {}
    events = [Event("gone", "new0", EventType.VIEW, 100.0), Event("gone", "i1", EventType.VIEW, 101.0),
              Event("gone", "i2", EventType.VIEW, 102.0)]
    run(owner, [events[:2], events[2:]], histories, [replica])
    key = user_key("gone")
    assert replica.signals.sessions.own_slot(key) >= 0 and key in replica._new_items["new0"]
    wire = encode_delta(owner.forget_users(["gone"]))
    assert owner.signals.sessions.own_slot(key) == -1  # the owner forgets at once
    replica.learn(decode_delta(wire))
    assert replica.signals.sessions.own_slot(key) == -1 and key not in replica._new_items["new0"]
    assert b"gone" not in snapshot(replica, 3)


def test_a_delta_round_trips_and_anything_else_is_bad_input() -> None:
    d = ItemDelta(items=[("a", 1.0, 5.5, "c"), ("b", 3.0, 6.0, None)],
                  sequences=[(user_key("u"), [("a", 5.5)], [("b", 3.0, 6.0)])],
                  new_items=[("b", user_key("u"), 3.0)], new_vectors=np.ones((1, 4), np.float32),
                  forget=[user_key("v")])
    back = decode_delta(encode_delta(d))
    assert (back.items, back.sequences, back.new_items, back.forget) == (d.items, d.sequences, d.new_items, d.forget)
    assert np.array_equal(back.new_vectors, d.new_vectors) and back.examples is None
    first, second = d.split()
    assert first.items + second.items == d.items and first.forget == d.forget and not second.forget


@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_not_a_delta(data: bytes) -> None:
    with pytest.raises(BadInputError):
        decode_delta(data)


def test_a_snapshot_that_does_not_fit_the_settings_is_refused(model: ALSModel) -> None:
    data = snapshot(ServedModel(model, device="cpu"), 0)
    with pytest.raises(ModelIncompatibleError):
        restore(ServedModel(model, device="cpu", signals=SignalsConfig(hidden=4)), data)
    with pytest.raises(ModelIncompatibleError):
        restore(ServedModel(model, device="cpu"), b"not a snapshot")


def test_a_shared_fleet_serves_every_worker_from_the_whole_stream(model: ALSModel) -> None:
    events = [ev for batch in stream(80, seed=4) for ev in batch]
    for shared in (True, False):
        fleet = ServedFleet(lambda: ServedModel(model, device="cpu"),
                            Deployment(batch=4, workers=3, partitions=3, shared=shared), k=10)
        fleet.arrive(events)
        fleet.flush()
        learned = [rec.signals.events for rec in {id(r): r for r in fleet.recs}.values()]
        if shared:
            assert learned == [len(events)] and fleet.deltas > 0 and fleet.delta_bytes > 0
        else:
            assert len(learned) == 3 and sum(learned) == len(events) and max(learned) < len(events)
        before = {u: fleet.served(u) for u in fleet.histories}
        fleet.restart()
        assert {u: fleet.served(u) for u in fleet.histories} == before  # published lists stay
        restarted = fleet.recs[0].signals.events
        assert restarted == (len(events) if shared else 0)


def test_a_delta_with_numbers_no_validated_event_makes_is_bad_input() -> None:
    """Anything that writes the deltas topic must not poison every worker's item side."""
    good = ItemDelta(items=[("a", 1.0, 5.0, None)], sequences=[(user_key("u"), [("a", 4.0)], [("b", 1.0, 5.0)])])
    decode_delta(encode_delta(good))
    bad = [ItemDelta(items=[("a", float("inf"), 5.0, None)]), ItemDelta(items=[("a", 1e300, 5.0, None)]),
           ItemDelta(items=[("a", 1.0, float("nan"), None)]),
           ItemDelta(sequences=[(user_key("u"), [("a", float("-inf"))], [("b", 1.0, 5.0)])]),
           ItemDelta(new_items=[("b", user_key("u"), 1.0)], new_vectors=np.full((1, 4), np.nan, np.float32)),
           ItemDelta(examples=Examples(np.array([0, 2]), np.zeros((2, len(FEATURES))), np.array([True, False]), 1)),
           ItemDelta(examples=Examples(np.array([0]), np.full((1, len(FEATURES)), np.inf), np.array([True]), 1)),
           ItemDelta(examples=Examples(np.array([0]), np.zeros((1, 3)), np.array([True]), 1))]
    for d in bad:
        with pytest.raises(BadInputError):
            decode_delta(encode_delta(d))

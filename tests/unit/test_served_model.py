from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_core.als import ALSModel
from model_core.config import ALSConfig, FoldInConfig
from model_core.events import Event, EventType
from model_core.served.model import ServedModel
from model_core.served.signals import FEATURES
from model_core.state import UserHistory

K = 4


@pytest.fixture()
def model() -> ALSModel:
    """Two orthogonal tastes: items a* point along e0, items b* along e1."""
    items = [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)]
    v = np.zeros((12, 4), np.float32)
    v[:6, 0] = np.linspace(1.0, 0.5, 6)
    v[6:, 1] = np.linspace(1.0, 0.5, 6)
    users = np.eye(4, dtype=np.float32)[[0, 1, 0, 1]]
    return ALSModel(ALSConfig(factors=4), items, v, ["x", "y", "z", "w"], users)


def history(user: str, items: list[str], t0: float = 1000.0, model: ALSModel | None = None) -> UserHistory:
    h = UserHistory(user)
    for j, item in enumerate(items):
        h.add(Event(user, item, EventType.VIEW, t0 + j), (model.config if model else ALSConfig()).weights,
              FoldInConfig())
    return h


def ids(lst: list[tuple[str, float]]) -> list[str]:
    return [i for i, _ in lst]


def test_user_gets_items_of_the_taste_they_showed(model: ALSModel) -> None:
    rec = ServedModel(model, device="cpu")
    [a_list, b_list] = rec.recommend([history("u", ["a0", "a1"]), history("v", ["b3"])], k=K)
    assert ids(a_list) == ["a2", "a3", "a4", "a5"]  # history excluded, best first
    assert set(ids(b_list)) <= {f"b{i}" for i in range(6)} and "b3" not in ids(b_list)
    assert all(s1 >= s2 for (_, s1), (_, s2) in zip(a_list, a_list[1:]))


def test_cold_user_gets_trending(model: ALSModel) -> None:
    rec = ServedModel(model, device="cpu")
    rec.signals.learn([Event("q", "b5", EventType.PURCHASE, 10.0), Event("q", "a4", EventType.VIEW, 10.0)])
    [lst] = rec.recommend([UserHistory("new")], k=K)
    assert ids(lst) == ["b5", "a4"]  # only items ever seen trend; no made-up filler


def test_unavailable_items_leave_lists_and_come_back(model: ALSModel) -> None:
    rec = ServedModel(model, device="cpu")
    h = history("u", ["a0"])
    rec.set_available(["a1", "a2"], False)
    got = ids(rec.recommend([h], k=K)[0])
    assert got[:3] == ["a3", "a4", "a5"] and got[3].startswith("b")  # b items all score 0: a tie
    rec.set_available(["a1"], True)
    assert ids(rec.recommend([h], k=K)[0])[:1] == ["a1"]


def test_exclusions_never_shorten_the_list(model: ALSModel) -> None:
    rec = ServedModel(model, device="cpu")
    h = history("u", ["a0"])
    [lst] = rec.recommend([h], k=K, exclude=[{"a0", "a1", "a2", "a3"}])
    assert len(lst) == K and not {"a0", "a1", "a2", "a3"} & set(ids(lst))


def test_new_item_is_folded_in_and_recommended_before_a_retrain(model: ALSModel) -> None:
    rec = ServedModel(model, device="cpu")
    assert not rec.knows("a_new")
    fans = {}
    for j, u in enumerate(["p", "q", "r"]):
        h = history(u, ["a0", "a1"], t0=2000.0 + j)
        ev = Event(u, "a_new", EventType.PURCHASE, 2010.0 + j)
        h.add(ev, model.config.weights, FoldInConfig())
        rec.observe([ev], {u: h})
        fans[u] = h
    assert rec.knows("a_new") and rec.n_items == 13
    vec = rec.index.vector("a_new")
    assert vec is not None and vec[0] > 5 * abs(vec[1])  # it lives with the a-taste
    [lst] = rec.recommend([history("s", ["a0", "a2"])], k=K)
    assert "a_new" in ids(lst)
    t = history("t", ["b0", "b1"])  # the b-taste's fold-in neighbours do not include it
    [lst] = rec.index.search(rec.embed([t]), K, [t.exclude()])
    assert "a_new" not in ids(lst)


def test_warm_up_keeps_nothing(model: ALSModel) -> None:
    warm, cold = ServedModel(model, device="cpu"), ServedModel(model, device="cpu")
    warm.warm_up(K)
    assert len(warm.signals.ids) == len(cold.signals.ids) == 0 and warm.index_version == cold.index_version
    hs = [history("u", ["a0", "b1"]), history("v", ["b3"])]
    assert warm.recommend(hs, k=K) == cold.recommend(hs, k=K)
    ServedModel(ALSModel(ALSConfig(factors=4), [], np.zeros((0, 4), np.float32), [], np.zeros((0, 4), np.float32)),
                device="cpu").warm_up(K)  # no items: nothing to warm


def test_embeddings_batch_equals_single(model: ALSModel) -> None:
    rec = ServedModel(model, device="cpu")
    hs = [history("u", ["a0", "b1", "a2"]), history("v", ["b0"]), UserHistory("cold")]
    batch = rec.embed(hs)
    for b, h in enumerate(hs):
        np.testing.assert_allclose(batch[b], rec.embed([h])[0], rtol=1e-5, atol=1e-7)
    assert not batch[2].any()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.tuples(st.sampled_from(["a0", "a3", "b1", "b4", "zz", "new"]),
                                   st.floats(0, 1e5), st.sampled_from(list(EventType))), max_size=12),
                min_size=1, max_size=6),
       st.sampled_from([0.0, 60.0, 3600.0]), st.sampled_from([1.0, 0.5]))
def test_batched_weights_equal_the_history_reference(model: ALSModel, users: list, half_life: float,
                                                     decay: float) -> None:
    """ServedModel builds a batch's fold-in weights vectorised; they must equal
    UserHistory.weighted_items restricted to items with a vector, in the same order."""
    cfg = FoldInConfig(history_size=5, half_life_s=half_life, position_decay=decay)
    rec = ServedModel(model, cfg, device="cpu")
    hs = []
    for u, rows in enumerate(users):
        h = UserHistory(f"u{u}")
        for item, t, kind in rows:
            h.add(Event(h.user_id, item, kind, t), model.config.weights, cfg)
        hs.append(h)
    idx, w = rec._padded(hs * 9)  # more than _SMALL_BATCH users: the vectorised path
    small_idx, small_w = rec._padded_small(hs)
    for b, h in enumerate(hs):
        np.testing.assert_array_equal(small_idx[b][small_idx[b] >= 0], idx[b][idx[b] >= 0])
        np.testing.assert_allclose(small_w[b][small_idx[b] >= 0], w[b][idx[b] >= 0], rtol=1e-5, atol=1e-30)
        items, ref = h.weighted_items(cfg)
        keep = [(model.item_ids.index(i), x) for i, x in zip(items, ref) if i in model.item_ids]
        got = [(int(r), float(x)) for r, x in zip(idx[b], w[b]) if r >= 0]
        assert [r for r, _ in got] == [r for r, _ in keep]
        np.testing.assert_allclose([x for _, x in got], [x for _, x in keep], rtol=1e-5, atol=1e-30)


def _observe(rec: ServedModel, hs: dict[str, UserHistory], events: list[Event]) -> None:
    touched = {}
    for ev in events:
        h = hs.setdefault(ev.user_id, UserHistory(ev.user_id))
        h.add(ev, rec.model.config.weights, rec.foldin_config)
        touched[ev.user_id] = h
    rec.observe(events, touched)


def test_sequential_neighbours_of_the_last_item_are_recommended(model: ALSModel) -> None:
    rec = ServedModel(model, device="cpu")
    hs: dict[str, UserHistory] = {}
    for j in range(5):  # many users go a0 -> b5
        _observe(rec, hs, [Event(f"u{j}", "a0", EventType.VIEW, 100.0 * j), Event(f"u{j}", "b5", EventType.VIEW, 100.0 * j + 5)])
    [lst] = rec.recommend([history("new", ["a0"], t0=1000.0)], k=K)
    assert "b5" in ids(lst)  # the fold-in alone (a-taste) would never give b5 first
    assert all(math.isfinite(s) for _, s in lst)


def test_category_trending_is_a_source(model: ALSModel) -> None:
    rec = ServedModel(model, device="cpu")
    rec.set_category(["a0", "b4"], ["shoes", "shoes"])
    hs: dict[str, UserHistory] = {}
    _observe(rec, hs, [Event("x", "b4", EventType.PURCHASE, 10.0, category="shoes")])
    cand, _ = rec._candidates([history("u", ["a0"], t0=20.0)], [{"a0"}])
    same = cand.x[:, FEATURES.index("same_category")]
    assert same[cand.row == rec.signals.rows["b4"]].tolist() == [1.0]


def test_the_ranker_learns_which_source_predicts_the_next_event(model: ALSModel) -> None:
    rec = ServedModel(model, device="cpu")
    hs: dict[str, UserHistory] = {}
    w0 = rec.signals.w.copy()
    t = 0.0
    for j in range(40):  # every user goes a-item -> the b-item the rules know, never fold-in's choice
        t += 100.0
        _observe(rec, hs, [Event(f"u{j}", f"a{j % 3}", EventType.VIEW, t), Event(f"u{j}", f"b{j % 3}", EventType.VIEW, t + 1)])
    assert rec.signals.trained_lists > 0
    assert not np.array_equal(rec.signals.w, w0)
    [lst] = rec.recommend([history("new", ["a1"], t0=t + 10)], k=1)
    assert ids(lst) == ["b1"]


def test_everything_stays_finite_for_events_far_out_of_time_order(model: ALSModel) -> None:
    rec = ServedModel(model, device="cpu")
    hs: dict[str, UserHistory] = {}
    times = [1.7e9, 1e11, 1.7e9 + 5, -1e11, 1e11 + 1, 0.0]
    for j, t in enumerate(times):
        _observe(rec, hs, [Event("u", f"a{j % 6}", EventType.VIEW, t), Event("v", f"b{j % 6}", EventType.PURCHASE, -t)])
    assert np.isfinite(rec.signals.trend).all() and np.isfinite(rec.signals.w).all()
    lists = rec.recommend([hs["u"], hs["v"], history("w", ["a0"])], k=K)
    assert all(len(lst) == K and all(math.isfinite(s) for _, s in lst) for lst in lists)


def test_batch_of_users_equals_one_by_one(model: ALSModel) -> None:
    rec = ServedModel(model, device="cpu")
    hs: dict[str, UserHistory] = {}
    for j in range(6):
        _observe(rec, hs, [Event(f"u{j}", f"a{j}", EventType.VIEW, 10.0 * j), Event(f"u{j}", f"b{j}", EventType.VIEW, 10.0 * j + 1)])
    users = [hs[f"u{j}"] for j in range(6)] + [history("c", ["a1", "b2"])]
    together = rec.recommend(users, k=K)
    alone = [rec.recommend([h], k=K)[0] for h in users]
    assert [ids(x) for x in together] == [ids(x) for x in alone]


def test_step_learns_what_observe_learns_with_one_search(model: ALSModel) -> None:
    """The worker's fused step trains the ranker on as many lists as observe and keeps the
    same item statistics; its lists are the touched users' top-k of unseen items."""
    fused, split = ServedModel(model, device="cpu"), ServedModel(model, device="cpu")
    rng = np.random.default_rng(3)
    items = model.item_ids + ["n1", "n2"]  # two items no model vector knows: folded in on the way
    hs_f: dict[str, UserHistory] = {}
    hs_s: dict[str, UserHistory] = {}
    t = 1000.0
    for _ in range(30):
        batch = []
        for _ in range(6):
            t += 1.0
            batch.append(Event(f"u{rng.integers(8)}", items[rng.integers(len(items))], EventType.VIEW, t))
        touched_f, touched_s = {}, {}
        for ev in batch:
            for hs, touched, rec in ((hs_f, touched_f, fused), (hs_s, touched_s, split)):
                h = hs.setdefault(ev.user_id, UserHistory(ev.user_id))
                if rec.apply(h, ev):
                    touched[ev.user_id] = h
        lists = fused.step(batch, touched_f, K)
        split.observe(batch, touched_s)
        assert len(lists) == len(touched_f)
        for h, lst in zip(touched_f.values(), lists):
            assert 0 < len(lst) <= K and not set(ids(lst)) & set(h.entries)
    a, b = fused.signals, split.signals
    assert a.trained_lists == b.trained_lists > 0
    assert sorted(a.ids) == sorted(b.ids)
    for stat in ("trend", "count", "last_seen"):
        got = {i: getattr(a, stat)[r] for i, r in a.rows.items()}
        want = {i: getattr(b, stat)[r] for i, r in b.rows.items()}
        assert got == pytest.approx(want), stat
    assert fused.knows("n1") and fused.knows("n2")  # new items folded in by the fused path too


def test_a_first_list_on_an_empty_item_side_is_the_users_own_fold_in(model: ALSModel) -> None:
    """A worker that starts with no snapshot: nothing learned from the stream yet, so the ranker's
    prior ranks the fold-in candidates (scores 1/(1+rank), which look like a fallback but are not)."""
    rec = ServedModel(model, device="cpu")
    h = history("u", ["a0", "b1", "a2"], model=model)
    plan = rec.plan_step([Event("u", "a2", EventType.VIEW, 1002.0)], {"u": h}, K)
    found = rec.index.search(rec.embed([h]), K, [h.exclude()])[0]
    assert ids(plan.lists[0]) == [i for i, _ in found]
    assert all(src == ("foldin",) for src in plan.sources[0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 7), st.lists(st.tuples(st.integers(0, 11), st.integers(0, 4)),
                                                               min_size=1, max_size=6)),
                         min_size=1, max_size=6), min_size=1, max_size=8),
       st.integers(2, 5), st.integers(1, 4))
def test_a_batch_of_sequences_learns_what_one_at_a_time_learns(batches: list, ring: int, postings: int) -> None:
    """``learn_sequences`` puts a batch's sessions at once (``put_many``); the item graphs and the
    session store must end as they do when each user's sequence is learned alone, in order, even
    when a ring this small recycles a slot of the same batch or a posting ring wraps."""
    from model_core.served.signals import SignalsConfig, StreamSignals

    cfg = SignalsConfig(knn_sessions=ring, knn_postings=postings, knn_session_len=3, max_edges=6)
    together, alone = StreamSignals(cfg), StreamSignals(cfg)
    clock = 0.0
    for batch in batches:
        seqs = []
        for user, new in dict(batch).items():  # one sequence per user in a batch, as _delta makes them
            clock += 1.0
            seqs.append((f"k{user}", [], [(f"i{item}", 1.0 + w, clock + 5000.0 * w) for item, w in new]))
        together.learn_sequences(seqs)
        for s in seqs:
            alone.learn_sequences([s])
    for name in ("items", "gen", "last_time", "post_slot", "post_gen", "post_next"):
        assert np.array_equal(getattr(together.sessions, name), getattr(alone.sessions, name)), name
    assert together.sessions.owner == alone.sessions.owner
    for graph in ("sr", "covisit"):
        assert getattr(together, graph).edges == getattr(alone, graph).edges


def test_index_slots_map_to_the_signal_rows_of_their_items(model: ALSModel) -> None:
    """The fold-in source's hits come back as index slots, mapped to signal rows through a
    remembered table; after the index frees slots the table is rebuilt, not trusted."""
    rec = ServedModel(model, device="cpu")
    slots = np.arange(0, len(model.item_ids), 7)
    rows = rec._signal_rows(slots)
    assert [rec.signals.ids[r] for r in rows.tolist()] == rec.index.ids_of_slots(slots)
    assert np.array_equal(rec._signal_rows(slots[::-1]), rows[::-1])  # remembered, same answer
    gone = rec.index.ids_of_slots(slots[:2])
    rec.index.remove(gone)
    rec.index.upsert(["brand-new"], np.ones((1, rec.index.dim), np.float32))
    new_slot = rec.index.search_slots(np.ones((1, rec.index.dim), np.float32), 1)[1]
    assert rec.index.ids_of_slots(new_slot) == ["brand-new"] and int(new_slot[0]) in slots[:2].tolist()
    assert rec.signals.ids[int(rec._signal_rows(new_slot)[0])] == "brand-new"


def test_the_stage_clock_times_every_stage_and_changes_no_list(model: ALSModel) -> None:
    """``StreamSignals.clock`` (benchmarks turn it on) charges each stage of a batch; off, the
    model keeps no timings. Either way the lists are the same."""
    from model_core.served.signals import StageClock

    def one_batch(rec: ServedModel) -> list:
        hs = {u: history(u, items, model=model) for u, items in (("u1", ["a0", "a1", "b0"]), ("u2", ["b1", "b2"]))}
        events = [Event(u, next(reversed(h.entries)), EventType.VIEW, 2000.0) for u, h in hs.items()]
        for ev in events:
            rec.apply(hs[ev.user_id], ev)
        return rec.step(events, hs, 5)

    timed, plain = ServedModel(model, device="cpu"), ServedModel(model, device="cpu")
    clock = timed.signals.clock = StageClock()
    assert one_batch(timed) == one_batch(plain)
    assert plain.signals.clock is None
    assert {"prepare", "fold-in", "search", "sr", "covisit", "knn", "trending+category", "features", "rank",
            "delta", "learn"} <= set(clock.seconds)
    assert all(s >= 0.0 for s in clock.seconds.values())

"""Tests for model_core.offline.synth: the synthetic e-commerce event log."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_core.errors import ConfigError
from model_core.events import Event, EventType, event_from_dict
from model_core.offline.synth import (
    SynthCatalog,
    SynthConfig,
    generate_events,
    make_catalog,
    write_log,
)

SMALL = SynthConfig(users=500, items=400, events=20_000, clusters=10, seed=3)


@pytest.fixture(scope="module")
def small_log() -> list[Event]:
    return list(generate_events(SMALL))


@pytest.fixture(scope="module")
def default_log() -> list[Event]:
    return list(generate_events(SynthConfig()))


def _item_index(events: list[Event]) -> np.ndarray:
    return np.array([SynthCatalog.item_index(e.item_id) for e in events])


def _user_index(events: list[Event]) -> np.ndarray:
    return np.array([SynthCatalog.user_index(e.user_id) for e in events])


# -- determinism ---------------------------------------------------------------


def test_same_seed_same_events(small_log: list[Event]) -> None:
    again = list(generate_events(SMALL))
    assert again == small_log


def test_passing_the_catalog_gives_the_same_log(small_log: list[Event]) -> None:
    assert list(generate_events(SMALL, make_catalog(SMALL))) == small_log


def test_different_seed_different_events(small_log: list[Event]) -> None:
    other = list(itertools.islice(generate_events(dataclasses.replace(SMALL, seed=4)), 1000))
    assert other != small_log[:1000]


def test_catalog_is_deterministic() -> None:
    a, b = make_catalog(SMALL), make_catalog(SMALL)
    np.testing.assert_array_equal(a.cluster_of_item, b.cluster_of_item)
    np.testing.assert_array_equal(a.launch_time, b.launch_time)
    np.testing.assert_array_equal(a.price, b.price)


# -- shape of the log ------------------------------------------------------------


@pytest.mark.parametrize("events", [0, 1, 7, 1000, 20_000])
def test_event_count_is_exact(events: int) -> None:
    cfg = SynthConfig(users=300, items=200, events=events, clusters=5)
    assert sum(1 for _ in generate_events(cfg)) == events


def test_time_order_and_period(small_log: list[Event]) -> None:
    times = np.array([e.time for e in small_log])
    assert np.all(np.diff(times) >= 0)
    assert times[0] >= SMALL.start_time
    # sessions start inside the period; the last may run a little past it
    assert times[-1] <= SMALL.end_time + 6 * 3600


def test_ids_unique_and_well_formed(small_log: list[Event]) -> None:
    ids = [e.event_id for e in small_log]
    assert ids == [f"e{n}" for n in range(len(small_log))]
    assert all(e.session_id and e.session_id.startswith("s") for e in small_log)
    assert all(0 <= SynthCatalog.user_index(e.user_id) < SMALL.users for e in small_log)
    assert all(0 <= SynthCatalog.item_index(e.item_id) < SMALL.items for e in small_log)


def test_sessions_are_bursts_of_one_user(small_log: list[Event]) -> None:
    by_session: dict[str, list[Event]] = {}
    for e in small_log:
        by_session.setdefault(e.session_id or "", []).append(e)
    assert len(by_session) > SMALL.events / 20
    spans = []
    for evs in by_session.values():
        assert len({e.user_id for e in evs}) == 1
        spans.append(evs[-1].time - evs[0].time)
    assert np.median(spans) < 3600  # minutes, not days
    lengths = [len(v) for v in by_session.values()]
    assert 3 < np.mean(lengths) < 12


def test_types_quantity_and_stable_price(small_log: list[Event]) -> None:
    cat = make_catalog(SMALL)
    for e in small_log:
        assert e.type in (EventType.VIEW, EventType.ADD_TO_CART, EventType.PURCHASE)
        if e.type is EventType.VIEW:
            assert e.quantity is None and e.price is None
        else:
            assert e.quantity == 1
            assert e.price == cat.price[SynthCatalog.item_index(e.item_id)] > 0


# -- funnel -----------------------------------------------------------------------


def test_purchase_share_matches_conversion_rate() -> None:
    for rate in (0.03, 0.1):
        cfg = SynthConfig(users=1000, items=500, events=60_000, conversion_rate=rate, seed=5)
        kinds = Counter(e.type for e in generate_events(cfg))
        share = kinds[EventType.PURCHASE] / kinds[EventType.VIEW]
        assert share == pytest.approx(rate, rel=0.15)
        assert kinds[EventType.ADD_TO_CART] >= kinds[EventType.PURCHASE]


def test_zero_conversion_gives_only_views() -> None:
    cfg = SynthConfig(users=100, items=100, events=2000, clusters=4, conversion_rate=0.0)
    assert {e.type for e in generate_events(cfg)} == {EventType.VIEW}


def test_every_purchase_follows_a_cart_in_the_same_session(small_log: list[Event]) -> None:
    carts: Counter[tuple[str, str, str | None]] = Counter()
    n_purchases = 0
    for e in small_log:
        key = (e.user_id, e.item_id, e.session_id)
        if e.type is EventType.ADD_TO_CART:
            carts[key] += 1
        elif e.type is EventType.PURCHASE:
            assert carts[key] > 0, f"purchase {e.event_id} without an earlier add_to_cart"
            carts[key] -= 1
            n_purchases += 1
    assert n_purchases > 0


def test_every_cart_follows_a_view(small_log: list[Event]) -> None:
    viewed: set[tuple[str, str, str | None]] = set()
    for e in small_log:
        key = (e.user_id, e.item_id, e.session_id)
        if e.type is EventType.VIEW:
            viewed.add(key)
        elif e.type is EventType.ADD_TO_CART:
            assert key in viewed


# -- ground truth structure -------------------------------------------------------


def test_new_items_never_before_launch(small_log: list[Event]) -> None:
    cat = make_catalog(SMALL)
    assert cat.is_new.sum() == round(SMALL.new_item_fraction * SMALL.items)
    items = _item_index(small_log)
    times = np.array([e.time for e in small_log])
    assert np.all(cat.launch_time[items] <= times)
    # new items do show up (after launch)
    assert cat.is_new[items].any()
    # the top item of every cluster exists from the start
    for c in range(SMALL.clusters):
        assert not cat.is_new[cat.items_in_cluster(c)[0]]


def test_new_items_get_a_launch_boost(default_log: list[Event]) -> None:
    cat = make_catalog(SynthConfig())
    items = _item_index(default_log)
    times = np.array([e.time for e in default_log])
    # new items launched early enough to be seen for 4 days
    new = cat.is_new[items] & (cat.launch_time[items] < SynthConfig().end_time - 4 * 86400)
    age = times[new] - cat.launch_time[items[new]]
    # more of a new item's events fall in its first 2 days than in the 2 days after
    early = (age < 2 * 86400).sum()
    later = ((age >= 2 * 86400) & (age < 4 * 86400)).sum()
    assert early > 1.5 * later


def test_catalog_layout() -> None:
    cat = make_catalog(SMALL)
    assert cat.cluster_of_item.shape == (SMALL.items,)
    assert cat.launch_time.shape == (SMALL.items,)
    assert cat.item_id(12) == "i12" and cat.user_id(45) == "u45"
    assert cat.item_ids[:3] == ["i0", "i1", "i2"] and len(cat.item_ids) == SMALL.items
    seen = np.concatenate([cat.items_in_cluster(c) for c in range(SMALL.clusters)])
    assert sorted(seen.tolist()) == list(range(SMALL.items))
    for c in range(SMALL.clusters):
        members = cat.items_in_cluster(c)
        assert members.size >= 1
        assert np.all(cat.cluster_of_item[members] == c)
        assert np.all(np.diff(cat.popularity[members]) <= 1e-15)  # most popular first
    assert cat.popularity.sum() == pytest.approx(1.0)
    assert len(set(cat.cluster_size.tolist())) > 1  # clusters differ in size
    with pytest.raises(IndexError):
        cat.items_in_cluster(SMALL.clusters)


def test_users_concentrate_in_their_top_cluster(default_log: list[Event]) -> None:
    cfg = SynthConfig()
    cat = make_catalog(cfg)
    users, items = _user_index(default_log), _item_index(default_log)
    m = np.zeros((cfg.users, cfg.clusters))
    np.add.at(m, (users, cat.cluster_of_item[items]), 1)
    total = m.sum(axis=1)
    active = total >= 10
    assert active.sum() > 300
    assert (m.max(axis=1)[active] / total[active]).mean() > 0.6


def test_popularity_is_skewed(default_log: list[Event]) -> None:
    cfg = SynthConfig()
    counts = np.sort(np.bincount(_item_index(default_log), minlength=cfg.items))[::-1]
    assert counts[: cfg.items // 10].sum() > 0.4 * counts.sum()


def test_user_activity_is_heavy_tailed(default_log: list[Event]) -> None:
    per_user = np.bincount(_user_index(default_log), minlength=SynthConfig().users)
    per_user = np.sort(per_user)[::-1]
    assert per_user[: len(per_user) // 10].sum() > 0.3 * per_user.sum()


def test_drift_makes_recent_history_more_predictive() -> None:
    """With drift, a user's later clusters match their recent clusters better than their early ones."""
    cfg = SynthConfig(users=300, items=400, events=40_000, clusters=10, drift_rate=0.3, seed=2)
    cat = make_catalog(cfg)
    by_user: dict[str, list[int]] = {}
    for e in generate_events(cfg, cat):
        by_user.setdefault(e.user_id, []).append(
            int(cat.cluster_of_item[SynthCatalog.item_index(e.item_id)])
        )
    early_hits = recent_hits = n = 0
    for seq in by_user.values():
        if len(seq) < 60:
            continue
        early, recent, target = seq[:20], seq[-40:-20], seq[-20:]
        top_early = Counter(early).most_common(1)[0][0]
        top_recent = Counter(recent).most_common(1)[0][0]
        early_hits += sum(c == top_early for c in target)
        recent_hits += sum(c == top_recent for c in target)
        n += len(target)
    assert n > 0
    assert recent_hits > 1.1 * early_hits


def test_no_drift_keeps_taste_stable() -> None:
    cfg = SynthConfig(users=300, items=400, events=20_000, clusters=10, drift_rate=0.0, seed=2)
    cat = make_catalog(cfg)
    m = np.zeros((cfg.users, cfg.clusters))
    for e in generate_events(cfg, cat):
        m[
            SynthCatalog.user_index(e.user_id),
            cat.cluster_of_item[SynthCatalog.item_index(e.item_id)],
        ] += 1
    active = m.sum(axis=1) >= 10
    assert (m.max(axis=1)[active] / m.sum(axis=1)[active]).mean() > 0.7


# -- files ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["log.jsonl", "log.jsonl.gz"])
def test_write_log_round_trip(tmp_path: Path, name: str) -> None:
    cfg = SynthConfig(users=200, items=150, events=3000, clusters=6, seed=9)
    path = tmp_path / name
    assert write_log(path, cfg) == 3000
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        rows = [json.loads(line) for line in f]
    assert [event_from_dict(r) for r in rows] == list(generate_events(cfg))
    if name.endswith(".gz"):
        with open(path, "rb") as f:
            assert f.read(2) == b"\x1f\x8b"


def test_write_log_is_byte_reproducible_and_shows_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = SynthConfig(users=100, items=100, events=1000, clusters=4)
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_log(a, cfg, progress=True)
    write_log(str(b), cfg)
    assert a.read_bytes() == b.read_bytes()
    assert "100%" in capsys.readouterr().err


# -- validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"users": 0},
        {"items": 0},
        {"events": -1},
        {"clusters": 0},
        {"clusters": 2000},  # more clusters than items
        {"seed": -1},
        {"days": 0},
        {"days": float("nan")},
        {"start_time": float("inf")},
        {"popularity_exponent": -0.1},
        {"conversion_rate": 1.5},
        {"drift_rate": -0.1},
        {"new_item_fraction": 1.0},
        {"session_length_mean": 0.5},
        {"users": 2.5},
        {"events": True},
        {"conversion_rate": "0.1"},
    ],
)
def test_invalid_config_raises(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        SynthConfig(**bad)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_mismatched_catalog_raises() -> None:
    with pytest.raises(ConfigError):
        generate_events(SMALL, make_catalog(SynthConfig(items=100, clusters=5)))


def test_extreme_settings_still_work() -> None:
    cfg = SynthConfig(
        users=1,
        items=1,
        events=500,
        clusters=1,
        conversion_rate=1.0,
        drift_rate=1.0,
        new_item_fraction=0.9,
        session_length_mean=1.0,
        popularity_exponent=0.0,
        days=0.01,
    )
    evs = list(generate_events(cfg))
    assert len(evs) == 500
    assert {e.item_id for e in evs} == {"i0"}
    assert all(a.time <= b.time for a, b in itertools.pairwise(evs))


@settings(max_examples=25, deadline=None)
@given(
    users=st.integers(1, 50),
    items=st.integers(1, 60),
    events=st.integers(0, 800),
    clusters=st.integers(1, 8),
    seed=st.integers(0, 2**31),
    days=st.floats(0.001, 30.0),
    conversion_rate=st.floats(0.0, 1.0),
    drift_rate=st.floats(0.0, 1.0),
    new_item_fraction=st.floats(0.0, 0.95),
    session_length_mean=st.floats(1.0, 20.0),
)
def test_invariants_hold_for_any_config(**kw: Any) -> None:
    kw["clusters"] = min(kw["clusters"], kw["items"])
    cfg = SynthConfig(**kw)
    cat = make_catalog(cfg)
    evs = list(generate_events(cfg, cat))
    assert len(evs) == cfg.events
    assert [e.event_id for e in evs] == [f"e{n}" for n in range(cfg.events)]
    carts: Counter[tuple[str, str, str | None]] = Counter()
    last = -np.inf
    for e in evs:
        assert e.time >= last
        last = e.time
        assert cat.launch_time[SynthCatalog.item_index(e.item_id)] <= e.time
        key = (e.user_id, e.item_id, e.session_id)
        if e.type is EventType.ADD_TO_CART:
            carts[key] += 1
        elif e.type is EventType.PURCHASE:
            assert carts[key] > 0
            carts[key] -= 1


# -- scale ------------------------------------------------------------------------


def test_larger_generation_exercises_windowing() -> None:
    """200k events over several windows (no timing assert; should take ~1 s)."""
    cfg = SynthConfig(users=20_000, items=20_000, events=200_000, seed=11)
    cat = make_catalog(cfg)
    n = 0
    last = -np.inf
    for e in generate_events(cfg, cat):
        assert e.time >= last
        last = e.time
        n += 1
    assert n == cfg.events

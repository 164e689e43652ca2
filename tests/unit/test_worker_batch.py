"""The worker's batch step without a broker: what a failed batch, an erase, a retry and a rebalance
leave behind (streams.worker.batch, streams.worker.userstate). The broker-side seams (the producer,
the changelog read) are replaced by spec'd fakes; the model is a real ServedModel."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import numpy as np
import pytest

from model_core.als import ALSModel
from model_core.config import ALSConfig
from model_core.errors import ConfigError
from model_core.events import Event, EventType
from model_core.served.model import ServedModel
from model_core.served.shared import decode_delta, user_key
from model_core.state import UserHistory
from streams.codec import encode_erase
from streams.settings import Settings, load_settings
from streams.worker.batch import BatchFailedError, BatchProcessor
from streams.worker.health import Health
from streams.worker.model import WorkerModel
from streams.worker.publisher import Publisher
from streams.worker.userstate import EPOCH_HEADER, UserStateStore

T0 = 1_700_000_000.0


class Msg:
    """What the batch step reads of a confluent-kafka message."""

    def __init__(self, partition: int, offset: int, key: bytes | None, value: bytes | None,
                 topic: str = "t.events") -> None:
        self._p, self._o, self._k, self._v, self._t = partition, offset, key, value, topic

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v

    def topic(self) -> str:
        return self._t

    def timestamp(self) -> tuple[int, int]:
        return (1, int((T0 + 100) * 1000))


def view(p: int, offset: int, user: str, item: str, t: float) -> Msg:
    ev = {"user_id": user, "item_id": item, "type": "view", "time": T0 + t}
    return Msg(p, offset, user.encode(), json.dumps(ev).encode())


def erase(p: int, offset: int, user: str) -> Msg:
    return Msg(p, offset, user.encode(), encode_erase(user))


@pytest.fixture()
def settings() -> Settings:
    return load_settings(environ={}).with_(topic_prefix="t", error_retries=1, k=4)


@pytest.fixture()
def served(settings: Settings, tmp_path: Path) -> WorkerModel:
    items = [f"i{j}" for j in range(12)]
    v = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    model = ALSModel(ALSConfig(factors=4), items, v, ["x"], np.ones((1, 4), np.float32))
    s = WorkerModel(settings, tmp_path)
    s.rec = ServedModel(model, device="cpu")
    return s


def processor(settings: Settings, served: WorkerModel) -> tuple[BatchProcessor, Any, UserStateStore]:
    out = MagicMock(spec_set=Publisher)
    store = UserStateStore(settings)
    store._install(0, {}, 5)
    store._install(1, {}, 6)
    return BatchProcessor(settings, served, store, out, Health(60.0)), out, store


def produced(out: Any, topic: str) -> list[tuple[Any, ...]]:
    return [c.args for c in out.produce.call_args_list if c.args[0] == topic]


def test_a_batch_whose_compute_fails_is_dead_lettered_whole_and_its_erase_still_applies(
        settings: Settings, served: WorkerModel) -> None:
    proc, out, store = processor(settings, served)
    store.put(0, "gone", UserHistory("gone").encode())
    served.rec.signals.sessions.slot_of("gone", T0, 1800.0)  # the user's session-kNN slot
    learned = served.rec.signals.learn
    served.rec.plan_step = MagicMock(side_effect=RuntimeError("model broke"))  # type: ignore[method-assign]
    served.rec.signals.learn = MagicMock(side_effect=learned)  # type: ignore[method-assign]
    after = proc.process([view(0, 10, "a", "i1", 1), erase(0, 11, "gone"), view(1, 3, "b", "i2", 2)])
    # the events are dead-lettered with the reason; nothing of them changed any state or model
    dlq = produced(out, settings.dlq_topic)
    assert len(dlq) == 2 and all(b"batch failed" in args[2] for args in dlq)
    assert store.get(0, "a").events_applied == 0 and store.get(1, "b").events_applied == 0
    served.rec.signals.learn.assert_not_called()
    # the erase is applied all the same: tombstone list, marker state, the model forgets the user
    assert (settings.recommendations_topic, b"gone", None, 0) in produced(out, settings.recommendations_topic)
    marker = store.get(0, "gone")
    assert marker.entries == {} and marker.position == (0, 11)
    assert served.rec.signals.sessions.own_slot(user_key("gone")) == -1
    assert after is not None  # the marker becomes a tombstone once the erase's offset is committed
    after()
    assert (settings.state_topic, b"gone", None, 0, [(EPOCH_HEADER, b"5")]) in produced(out, settings.state_topic)


def test_compute_that_fails_once_publishes_the_batch_delta_once(settings: Settings, served: WorkerModel) -> None:
    proc, out, _ = processor(settings, served)
    real = served.rec.plan_step
    calls = {"plan": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["plan"] += 1
        if calls["plan"] == 1:
            raise RuntimeError("transient")
        return real(*args, **kwargs)

    served.rec.plan_step = flaky  # type: ignore[method-assign]
    proc.process([view(0, 1, "a", "i1", 1), view(0, 2, "a", "i2", 2)])
    assert calls["plan"] == 2 and proc.metrics.count("retries") == 1 and not produced(out, settings.dlq_topic)
    # nothing is learned locally: the batch's delta goes out once, on the deltas topic's one partition
    assert "i2" not in served.rec.signals.rows or served.rec.signals.count[served.rec.signals.rows["i2"]] == 0
    [(topic, key, wire, partition)] = produced(out, settings.deltas_topic)
    assert (key, partition) == (None, 0)
    served.rec.learn(decode_delta(wire))  # what every worker does when it reads the record back
    assert served.rec.signals.count[served.rec.signals.rows["i2"]] > 0


def test_a_flush_that_keeps_failing_stops_the_worker_and_dead_letters_nothing(
        settings: Settings, served: WorkerModel) -> None:
    proc, out, store = processor(settings, served)
    out.flush.side_effect = ConnectionError("broker away")
    with pytest.raises(BatchFailedError, match="stopping"):
        proc.process([view(0, 1, "a", "i1", 1)])
    assert not produced(out, settings.dlq_topic)
    # the worker stops on this (exit 70): the batch's offsets are never committed, and it is read
    # again after the restart, from the state on the broker (tests/unit/test_consumer_pipeline.py)


def test_an_erased_users_earlier_events_read_again_are_not_applied(settings: Settings, served: WorkerModel) -> None:
    proc, out, store = processor(settings, served)
    proc.process([view(0, 1, "a", "i1", 1), view(0, 2, "a", "i2", 2)])
    assert proc.process([erase(0, 3, "a")]) is not None
    # a crash before the commit: the same messages are read again after the restart
    proc.process([view(0, 1, "a", "i1", 1), view(0, 2, "a", "i2", 2), erase(0, 3, "a")])
    assert store.get(0, "a").events_applied == 0 and proc.metrics.count("events_duplicate") == 2
    lists = [a for a in produced(out, settings.recommendations_topic) if a[2] is not None]
    assert len(lists) == 1  # only the list from before the erase: the erased user is not republished


def test_erase_drops_what_the_model_keeps_under_the_users_id(served: WorkerModel) -> None:
    rec = served.rec
    assert rec is not None
    h = UserHistory("u")
    for j, item in enumerate(["i1", "new-item"]):
        ev = Event("u", item, EventType.VIEW, T0 + j)
        rec.apply(h, ev)
        rec.step([ev], {"u": h})
    assert rec.signals.sessions.own_slot(user_key("u")) >= 0 and user_key("u") in rec._new_items["new-item"]
    rec.forget_users(["u"])
    assert rec.signals.sessions.own_slot(user_key("u")) == -1 and "u" not in rec._new_items["new-item"]
    assert not any(user_key("u") in seen for seen in rec._new_items.values())


class CountingStore(UserStateStore):
    """``load`` from a dict instead of the changelog, counting the partitions it reads."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.read: list[int] = []

    def load(self, partitions: Collection[int]) -> dict[int, tuple[dict[str, bytes], int]]:
        self.read += sorted(partitions)
        return {p: ({f"u{p}": b"{}"}, 100 + p) for p in partitions}


def test_recovery_reads_only_partitions_new_to_the_worker(settings: Settings) -> None:
    store = CountingStore(settings)
    store.recover({0, 1})
    assert store.read == [0, 1]
    store.put(0, "kept", b"{}")
    # cooperative: only the moved partition is revoked; the next assignment adds one
    store.drop([1])
    store.recover({0, 2})
    assert store.read == [0, 1, 2] and store._parts[0]["kept"] == b"{}"
    # eager: everything is revoked and most of it comes back in the very next assignment
    store.park([0, 2])
    store.recover({0, 3})
    assert store.read == [0, 1, 2, 3] and store._parts[0]["kept"] == b"{}" and not store.loaded(2)
    assert store.epoch(0) == 100 and store.headers(3) == [(EPOCH_HEADER, b"103")]


def test_each_published_item_says_which_sources_proposed_it(settings: Settings, served: WorkerModel) -> None:
    from model_core.served.model import SOURCES
    from streams.codec import decode_recommendation

    proc, out, _ = processor(settings, served)
    proc.process([view(0, j, "a", f"i{j}", j) for j in range(1, 4)])
    [args] = [a for a in produced(out, settings.recommendations_topic) if a[2] is not None]
    rec = decode_recommendation(args[2])
    assert rec.sources is not None and len(rec.sources) == len(rec.items) == settings.k
    assert all(s and set(s) <= set(SOURCES) for s in rec.sources)
    assert any("foldin" in s for s in rec.sources)  # a user with known items: the fold-in proposes


# -- live quality: the worker's published lists against its users' next events -----------------------


def last_list(out: Any, settings: Settings, user: str) -> list[str]:
    """The items of the newest list published to ``user``."""
    from streams.codec import decode_recommendation

    lists = [a for a in produced(out, settings.recommendations_topic) if a[1] == user.encode() and a[2] is not None]
    return decode_recommendation(lists[-1][2]).item_ids


def live(proc: BatchProcessor) -> dict[str, tuple[int, int]]:
    return proc.metrics.live_quality()


def test_live_quality_scores_each_new_item_against_the_users_last_published_list(
        settings: Settings, served: WorkerModel) -> None:
    proc, out, _ = processor(settings, served)
    version = served.rec.model_version
    proc.process([view(0, 1, "a", "i1", 1)])
    assert live(proc) == {}  # no list published to the user before: not a point
    listed = last_list(out, settings, "a")
    assert "i1" not in listed and len(listed) == settings.k
    # a hit; in the same batch, a user without a list is no point
    proc.process([view(0, 2, "a", listed[0], 2), view(1, 1, "b", "i1", 2)])
    assert live(proc) == {version: (1, 1)}
    listed = last_list(out, settings, "a")  # the list after that batch is the one scored next
    miss = next(f"i{j}" for j in range(12) if f"i{j}" not in listed and f"i{j}" not in proc.store.get(0, "a").entries)
    # a miss, then an item already in the user's history (no point)
    proc.process([view(0, 3, "a", miss, 3), view(0, 4, "a", "i1", 4)])
    assert live(proc) == {version: (2, 1)}
    # the same messages read again (a re-delivery) score nothing
    proc.process([view(0, 3, "a", miss, 3), view(0, 4, "a", "i1", 4)])
    assert live(proc) == {version: (2, 1)} and proc.metrics.count("events_duplicate") == 2
    text = proc.metrics.prometheus().decode()
    assert f'freshrec_live_points_total{{model_version="{version}"}} 2.0' in text
    assert f'freshrec_live_hits_total{{model_version="{version}"}} 1.0' in text
    proc.metrics.model_version = version  # the log line shows the served version's (the worker sets it)
    assert "live hr=0.5 (1/2)" in proc.metrics.log_line()


def test_live_quality_counts_under_the_version_that_made_the_list(settings: Settings, served: WorkerModel) -> None:
    proc, out, _ = processor(settings, served)
    assert served.rec is not None
    old = served.rec.model_version
    proc.process([view(0, 1, "a", "i1", 1)])
    served.rec.model.version = "v-next"  # a newer version is served from now on
    hit = last_list(out, settings, "a")[0]
    proc.process([view(0, 2, "a", hit, 2)])  # scored against the old version's list
    nxt = next(f"i{j}" for j in range(12) if f"i{j}" in last_list(out, settings, "a"))
    proc.process([view(0, 3, "a", nxt, 3)])  # against the new version's
    assert live(proc) == {old: (1, 1), "v-next": (1, 1)}
    from streams.worker.metrics import live_quality, parse

    summed = live_quality(parse(proc.metrics.prometheus().decode()), parse(proc.metrics.prometheus().decode()))
    assert summed["hits"] == summed["points"] == 4 and summed["hr"] == 1.0
    assert summed["by_model"]["v-next"] == {"hits": 2, "points": 2, "hr": 1.0}


def test_an_erased_user_has_no_list_to_be_scored_against(settings: Settings, served: WorkerModel) -> None:
    proc, out, _ = processor(settings, served)
    proc.process([view(0, 1, "a", "i1", 1), view(0, 2, "b", "i1", 1)])
    hit_a, hit_b = last_list(out, settings, "a")[0], last_list(out, settings, "b")[0]
    proc.process([erase(0, 3, "a")])
    assert "a" not in proc.published and "b" in proc.published
    proc.process([view(0, 4, "a", hit_a, 4)])
    assert live(proc) == {}
    # erased and active again in one batch: the events after the erase meet no list either
    proc.process([erase(0, 5, "b"), view(0, 6, "b", hit_b, 6)])
    assert live(proc) == {} and "b" in proc.published  # the new list is kept


def test_a_dead_lettered_batch_scores_nothing_and_keeps_the_old_list(settings: Settings, served: WorkerModel) -> None:
    proc, out, _ = processor(settings, served)
    assert served.rec is not None
    proc.process([view(0, 1, "a", "i1", 1)])
    hit = last_list(out, settings, "a")[0]
    plan = served.rec.plan_step
    served.rec.plan_step = MagicMock(side_effect=RuntimeError("model broke"))  # type: ignore[method-assign]
    proc.process([view(0, 2, "a", hit, 2)])
    assert live(proc) == {}
    served.rec.plan_step = plan  # type: ignore[method-assign]
    proc.process([view(0, 2, "a", hit, 2)])  # the DLQ replayed: now it counts, once
    assert live(proc) == {served.rec.model_version: (1, 1)}


def test_lists_from_before_a_partition_was_recovered_are_not_scored(settings: Settings, served: WorkerModel) -> None:
    proc, out, store = processor(settings, served)
    proc.process([view(0, 1, "a", "i1", 1)])
    hit = last_list(out, settings, "a")[0]
    store._install(0, dict(store._parts[0]), 50)  # lost and recovered: another owner may have published since
    proc.process([view(0, 2, "a", hit, 2)])
    assert live(proc) == {}


def test_the_least_recently_published_users_list_goes_first(settings: Settings, served: WorkerModel) -> None:
    from streams.worker.livequality import PublishedLists

    lists = PublishedLists(2)
    lists.put("a", "v", 0, ["i1"])
    lists.put("b", "v", 0, ["i2"])
    lists.put("a", "v", 0, ["i3"])  # published again: now the newest
    lists.put("c", "v", 0, ["i4"])
    assert "b" not in lists and lists.get("a", 0) == ("v", ("i3",)) and len(lists) == 2
    assert lists.get("c", 1) is None  # another epoch of the partition
    off = PublishedLists(0)
    off.put("a", "v", 0, ["i1"])
    assert len(off) == 0
    assert load_settings(environ={"FRESHREC_LIVE_QUALITY_USERS": "1000"}).live_quality_users == 1000
    with pytest.raises(ConfigError, match="FRESHREC_LIVE_QUALITY_USERS"):
        load_settings(environ={"FRESHREC_LIVE_QUALITY_USERS": "-1"})
    # through the worker: one user remembered; the other's next event is no point
    proc, out, _ = processor(settings.with_(live_quality_users=1), served)
    proc.process([view(0, 1, "a", "i1", 1)])
    hit = last_list(out, settings, "a")[0]
    proc.process([view(1, 1, "b", "i1", 1)])
    proc.process([view(0, 2, "a", hit, 2)])
    assert live(proc) == {} and "b" not in proc.published and "a" in proc.published


def test_a_remembered_list_costs_about_0_4_kb_a_user() -> None:
    """The figure FRESHREC_LIVE_QUALITY_USERS' documentation gives (item ids are the worker's own strings)."""
    import tracemalloc

    from streams.worker.livequality import PublishedLists

    items = [f"item-{i}" for i in range(5000)]
    lists = PublishedLists(10**6)
    tracemalloc.start()
    try:
        for u in range(20_000):
            lists.put(f"user-{u:08d}", "20261206T000000000000Z", 5, items[u % 4000 : u % 4000 + 20])
        per_user = tracemalloc.get_traced_memory()[0] / 20_000
    finally:
        tracemalloc.stop()
    assert 200 < per_user < 450, per_user


def test_own_deltas_records_are_learned_from_memory_once(settings: Settings, served: WorkerModel) -> None:
    from model_core.events import Event, EventType
    from streams.worker import model as worker_model

    h = UserHistory("a")
    ev = Event("a", "i1", EventType.VIEW, T0)
    served.rec.apply(h, ev)
    _, plan, wire = served.plan([ev], {"a": h})
    assert len(wire) == 1
    mine = served.own_delta(wire[0])
    assert mine is not None and mine.items == plan.delta.items
    assert served.own_delta(wire[0]) is None  # taken: a record read twice is decoded the second time
    assert served.own_delta(b"someone else's record") is None
    for t in range(worker_model._OWN_KEPT + 5):  # records that never come back are forgotten
        e = Event("a", f"i{t % 12}", EventType.VIEW, T0 + 1 + t)
        served.rec.apply(h, e)
        served.plan([e], {"a": h})
    assert len(served.own) == worker_model._OWN_KEPT

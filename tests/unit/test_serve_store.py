"""``streams.serve.store.Store`` without a broker: newest list wins, erasure, catalog at read time,
filters, counts by model version; and the serve settings."""

from __future__ import annotations

import gc
import json

import pytest

from model_core.errors import ConfigError
from streams.codec import Recommendation
from streams.serve.store import Store
from streams.settings import load_settings


def rec(user: str, items: list[str], published_at: float, model: str = "v1") -> Recommendation:
    return Recommendation(user, [(i, 1.0 - n / 10) for n, i in enumerate(items)], model, 1, 1, None, None,
                          published_at, last_event_at=published_at - 0.05)


def test_newest_list_wins_and_erasure_removes_it() -> None:
    s = Store()
    assert s.put(rec("u", ["a"], 10.0, "v1"), received_at=10.1)
    assert not s.put(rec("u", ["b"], 9.0, "v0"))  # older: ignored
    assert s.get("u").item_ids == ("a",) and s.by_model() == {"v1": 1}
    assert s.get("u").freshness_s == pytest.approx(0.15)
    assert s.put(rec("u", ["c"], 11.0, "v2"))
    assert s.by_model() == {"v2": 1}
    s.erase("u")
    assert "u" not in s.lists and "u" in s.erased and s.by_model() == {}
    s.put(rec("u", ["d"], 12.0))
    assert "u" not in s.erased


def test_select_applies_catalog_and_filters_at_read_time() -> None:
    s = Store()
    s.put(rec("u", ["a", "b", "c", "d"], 1.0))
    for item, cat in (("a", "x"), ("c", "x"), ("d", "y")):
        s.apply_catalog(json.dumps({"item_id": item, "event": "new", "category": cat}).encode())
    s.apply_catalog(b'{"item_id": "b", "event": "unavailable"}')
    e = s.get("u")
    assert e is not None
    pick = lambda **kw: [i for i, _, _ in s.select(e.item_ids, e.scores, e.sources, **kw).items]  # noqa: E731
    assert pick(k=None) == ["a", "c", "d"]
    assert pick(k=None, available_only=False) == ["a", "b", "c", "d"]
    assert pick(k=1, exclude={"a"}) == ["c"]
    assert pick(k=None, category="x") == ["a", "c"]
    assert s.select(e.item_ids, e.scores, e.sources, k=1, category="x").filtered == 2
    s.apply_catalog(b'{"item_id": "b", "event": "available"}')
    assert pick(k=2) == ["a", "b"]


def test_bad_catalog_and_trending_messages_are_skipped() -> None:
    s = Store()
    for bad in (b"{", b'{"item_id": "a", "event": "teleport"}', b"[]", None):
        s.apply_catalog(bad)
    s.set_trending(b'{"items": "nope"}')
    assert s.skipped == 5 and s.catalog_updates == 0 and s.trending is None
    s.set_trending(b'{"items": [{"item_id": "t", "score": 1}], "model_version": "v", "published_at": 5}')
    s.set_trending(b'{"items": [], "model_version": "old", "published_at": 4}')  # older: ignored
    assert s.trending is not None and s.trending.item_ids == ("t",)


def test_held_lists_leave_the_collectors_tracking_after_one_pass() -> None:
    s = Store()
    s.put(rec("u", ["a", "b"], 1.0))
    gc.collect()
    gc.collect()  # the inner tuples go first, then the list's own
    assert not gc.is_tracked(s.lists["u"])  # a million held lists cost full collections nothing


def test_serve_settings_validate() -> None:
    assert load_settings(environ={"FRESHREC_SERVE_PARTITIONS": "1, 0"}).serve_partition_ids == [0, 1]
    assert load_settings(environ={}).serve_partition_ids is None
    for bad in ({"FRESHREC_SERVE_PARTITIONS": "a"}, {"FRESHREC_SERVE_PARTITIONS": "-1"},
                {"FRESHREC_SERVE_PORT": "70000"}, {"FRESHREC_SERVE_RECENT_EVENTS": "-1"}):
        with pytest.raises(ConfigError):
            load_settings(environ=bad)
    urls = load_settings(environ={"FRESHREC_SERVE_WORKER_METRICS": "http://a/metrics, http://b/metrics"})
    assert urls.worker_metrics_urls == ["http://a/metrics", "http://b/metrics"]

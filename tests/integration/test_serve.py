"""``freshrec serve`` as a process over HTTP, against the session's real broker: filters,
catalog availability at read time, tombstones, the trending fallback, the batch form, bad
requests, readiness and /metrics."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_process import ServeProcess, rec

from streams.broker import EmbeddedBroker
from streams.kafka import client_config, ensure_topics
from streams.serve.api import BatchResponse, UserRecommendations
from streams.settings import Settings, load_settings


@pytest.fixture
def produce(settings: Settings) -> Iterator[Callable[..., None]]:
    """``produce(topic, key, value, partition=-1)`` then flush: the records are on the broker."""
    from confluent_kafka import Producer

    ensure_topics(settings)
    p = Producer(client_config(settings, "producer", **{"linger.ms": 0}))

    def send(topic: str, key: str | None, value: bytes | None, partition: int = -1) -> None:
        p.produce(topic, value, None if key is None else key.encode(), partition=partition)
        assert p.flush(10) == 0

    yield send
    p.flush(5)


@pytest.fixture
def start_serve(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(*extra: str, name: str = "serve") -> ServeProcess:
        s = ServeProcess(settings, tmp_path / f"{name}.log", *extra)
        started.append(s)
        s.wait_ready()
        return s

    yield start
    for s in started:
        s.stop()


def catalog(item: str, event: str, category: str | None = None) -> bytes:
    d: dict[str, Any] = {"item_id": item, "event": event}
    if category:
        d["category"] = category
    return json.dumps(d).encode()


def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_filters_catalog_at_read_time_and_newest_list(settings: Settings, produce: Callable[..., None],
                                                       start_serve: Callable[..., ServeProcess]) -> None:
    t = settings.recommendations_topic
    items = ["i1", "i2", "i3", "i4", "i5", "i6"]
    produce(t, "u1", rec("u1", items, published_at=time.time() - 10, model="old"))
    produce(t, "u1", rec("u1", items, model="v2", sources=[["foldin", "covisit"], None, ["trending"], None, None,
                                                           None]))
    for item, cat in (("i1", "shoes"), ("i3", "shoes"), ("i5", "hats")):
        produce(settings.items_topic, item, catalog(item, "new", cat))
    produce(settings.items_topic, "i2", catalog("i2", "unavailable"))
    srv = start_serve()

    status, body = srv.request("/v1/users/u1/recommendations")
    assert status == 200, body
    assert UserRecommendations.model_validate(body).model_dump() == body  # the documented contract, exactly
    assert [i["item_id"] for i in body["items"]] == ["i1", "i3", "i4", "i5", "i6"]  # i2 unavailable
    assert body["items"][0]["sources"] == ["foldin", "covisit"] and body["items"][2]["sources"] is None
    assert body["model_version"] == "v2" and body["index_version"] == 3 and body["source"] == "user"
    assert body["filtered"] == 1 and body["freshness_ms"] is not None and body["age_s"] >= 0
    assert time.time() - 5 < body["published_at"] <= time.time()

    got = srv.request("/v1/users/u1/recommendations?available_only=false&k=3")[1]
    assert [i["item_id"] for i in got["items"]] == ["i1", "i2", "i3"]
    got = srv.request("/v1/users/u1/recommendations?exclude=i1,i3&exclude=i6")[1]
    assert [i["item_id"] for i in got["items"]] == ["i4", "i5"]
    got = srv.request("/v1/users/u1/recommendations?category=shoes&k=1")[1]
    assert [i["item_id"] for i in got["items"]] == ["i1"] and got["filtered"] == 4

    # unavailability lands at read time, on the list already held; and back again
    produce(settings.items_topic, "i1", catalog("i1", "unavailable"))
    until(lambda: srv.request("/v1/users/u1/recommendations?k=1")[1]["items"][0]["item_id"] == "i3")
    produce(settings.items_topic, "i1", catalog("i1", "available"))
    until(lambda: srv.request("/v1/users/u1/recommendations?k=1")[1]["items"][0]["item_id"] == "i1")

    # a newer list replaces the held one; an older one does not
    produce(t, "u1", rec("u1", ["i9"], model="v3"))
    until(lambda: srv.request("/v1/users/u1/recommendations")[1]["model_version"] == "v3")
    produce(t, "u1", rec("u1", ["i8"], published_at=time.time() - 100, model="stale"))
    produce(t, "u9", rec("u9", ["i1"]))  # a marker: once u9 is visible, the stale list was read too
    until(lambda: srv.request("/v1/users/u9/recommendations")[0] == 200)
    assert srv.request("/v1/users/u1/recommendations")[1]["model_version"] == "v3"


def test_tombstones_trending_fallback_and_batch(settings: Settings, produce: Callable[..., None],
                                                start_serve: Callable[..., ServeProcess]) -> None:
    t = settings.recommendations_topic
    produce(t, "u1", rec("u1", ["i1", "i2"]))
    produce(t, "u2", rec("u2", ["i3"]))
    produce(t, "u2", None)  # erased before serve started
    srv = start_serve()

    status, body = srv.request("/v1/users/u2/recommendations")
    assert status == 404 and "erased" in body["error"] and "\n" not in body["error"]
    status, body = srv.request("/v1/users/nobody/recommendations")
    assert status == 404 and "has no list" in body["error"]
    assert srv.request("/v1/users/nobody/recommendations?fallback=trending")[0] == 404  # none published yet

    produce(settings.trending_topic, "global", json.dumps({
        "items": [{"item_id": "t1", "score": 9.0}, {"item_id": "t2", "score": 8.0}, {"item_id": "t3", "score": 7.0}],
        "model_version": "v1", "published_at": time.time()}).encode())
    produce(settings.items_topic, "t2", catalog("t2", "unavailable"))
    until(lambda: srv.request("/metrics")[1].count("freshrec_serve_unavailable_items 1.0") == 1)
    body = srv.request("/v1/users/u2/recommendations?fallback=trending&k=5")[1]
    assert body["source"] == "trending" and [i["item_id"] for i in body["items"]] == ["t1", "t3"]
    assert body["items"][0]["sources"] == ["trending"] and body["index_version"] is None
    assert srv.request("/v1/users/u2/recommendations")[0] == 404  # the default stays a 404

    # erased while serving: the held list goes
    produce(t, "u1", None)
    until(lambda: srv.request("/v1/users/u1/recommendations")[0] == 404)
    # a list after the erasure brings the user back
    produce(t, "u2", rec("u2", ["i4"]))
    until(lambda: srv.request("/v1/users/u2/recommendations")[0] == 200)

    status, body = srv.request("/v1/recommendations", {"users": ["u2", "u1", "nobody"], "k": 1})
    assert status == 200 and set(body["results"]) == {"u2"} and body["missing"] == ["u1", "nobody"]
    status, body = srv.request("/v1/recommendations", {"users": ["u2", "u1"], "fallback": "trending"})
    assert BatchResponse.model_validate(body).model_dump() == body
    assert body["results"]["u1"]["source"] == "trending" and body["results"]["u2"]["source"] == "user"
    status, body = srv.request("/v1/recommendations?users=u2,nobody&users=u1")
    assert status == 200 and list(body["results"]) == ["u2"] and body["missing"] == ["nobody", "u1"]


@pytest.mark.parametrize("path, body, raw, status, words", [
    ("/v1/users/u1/recommendations?k=0", None, None, 400, "k"),
    ("/v1/users/u1/recommendations?k=abc", None, None, 400, "k"),
    ("/v1/users/u1/recommendations?k=100000", None, None, 400, "k"),
    ("/v1/users/u1/recommendations?fallback=popular", None, None, 400, "fallback"),
    ("/v1/users/u1/recommendations?available_only=maybe", None, None, 400, "available_only"),
    ("/v1/users/" + "x" * 300 + "/recommendations", None, None, 400, "limit"),
    ("/v1/recommendations", None, b"{not json", 400, "JSON"),
    ("/v1/recommendations", {"users": []}, None, 400, "users"),
    ("/v1/recommendations", {"users": ["u"] * 1001}, None, 400, "users"),
    ("/v1/recommendations", {"users": "u1"}, None, 400, "users"),
    ("/v1/recommendations?users=,", None, None, 400, "users"),
    ("/v1/recommendations", None, None, 400, "users"),
    ("/nowhere", None, None, 404, "Not Found"),
])
def test_bad_requests_get_a_4xx_with_one_line(bad_serve: ServeProcess, path: str, body: Any,
                                              raw: bytes | None, status: int, words: str) -> None:
    got_status, got = bad_serve.request(path, body, raw)
    assert got_status == status, got
    assert isinstance(got, dict) and set(got) == {"error"}, got
    assert words.lower() in got["error"].lower() and "\n" not in got["error"] and "Traceback" not in got["error"]


@pytest.fixture(scope="module")
def bad_serve(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One serve process (topics of its own) for every bad-request case."""
    s = load_settings(environ={}).with_(brokers=broker.bootstrap, profile="embedded",
                                        topic_prefix=f"t{uuid.uuid4().hex[:8]}", partitions=2)
    ensure_topics(s)
    srv = ServeProcess(s, tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_health_ready_metrics_and_openapi(settings: Settings, produce: Callable[..., None],
                                          start_serve: Callable[..., ServeProcess]) -> None:
    t = settings.recommendations_topic
    for n in range(30):
        produce(t, f"u{n}", rec(f"u{n}", ["i1", "i2"], model="v1" if n % 3 else "v2"))
    produce(settings.dlq_topic, None, b'{"reason": "test"}')
    srv = start_serve()
    status, body = srv.request("/ready")
    assert status == 200 and body["ready"] and body["lists"] == 30  # ready means caught up: all 30 held
    assert srv.request("/health") == (200, {"status": "ok", "reason": None})
    srv.request("/v1/users/u1/recommendations")
    metrics = srv.request("/metrics")[1]
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
              if line and not line.startswith("#")}
    assert values["freshrec_serve_lists"] == 30
    assert values['freshrec_serve_model_lists{model_version="v1"}'] == 20
    assert values['freshrec_serve_model_lists{model_version="v2"}'] == 10
    assert values["freshrec_serve_dlq_messages"] == 1 and values["freshrec_serve_ready"] == 1
    assert values["freshrec_serve_lag"] >= 0
    assert values['freshrec_serve_request_seconds_count{route="/v1/users/{user_id}/recommendations"}'] >= 1
    spec = srv.request("/openapi.json")[1]
    assert "/v1/users/{user_id}/recommendations" in spec["paths"] and "/v1/recommendations" in spec["paths"]
    assert srv.request("/docs")[0] == 200
    assert srv.stop() == 0  # SIGTERM: a clean exit


def test_partitions_flag_holds_only_those_partitions(settings: Settings, produce: Callable[..., None],
                                                     start_serve: Callable[..., ServeProcess]) -> None:
    t = settings.recommendations_topic
    produce(t, "a", rec("a", ["i1"]), partition=0)
    produce(t, "b", rec("b", ["i1"]), partition=1)
    srv = start_serve("--partitions", "1")
    assert srv.request("/v1/users/a/recommendations")[0] == 404
    assert srv.request("/v1/users/b/recommendations")[0] == 200
    assert srv.request("/ready")[1]["lists"] == 1

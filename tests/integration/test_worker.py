"""The worker end to end on a real broker process: events in, lists out."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from workers import WorkerProcess

from model_core.als import train_als
from model_core.config import ALSConfig
from model_core.offline.synth import SynthConfig, generate_events, make_catalog
from streams.broker import EmbeddedBroker, free_port
from streams.codec import Recommendation
from streams.kafka import client_config
from streams.recommendation_client import RecommendationClient
from streams.settings import Settings, load_settings
from streams.worker.metrics import live_quality, scrape

SYNTH = SynthConfig(users=400, items=150, events=30_000, clusters=5, new_item_fraction=0.0, seed=11)
T0 = SYNTH.start_time + SYNTH.days * 86400 + 3600  # after the training log


@dataclass
class Worker:
    settings: Settings
    process: WorkerProcess
    models: Path
    first_version: str

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    def log_text(self) -> str:
        return self.process.log_text()


def _train(models: Path, seed: int) -> str:
    model = train_als(generate_events(SYNTH), ALSConfig(factors=16, iterations=8, seed=seed), device="cpu")
    model.save(models)
    return model.version


@pytest.fixture(scope="module")
def worker(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp("worker")
    models = tmp / "models"
    version = _train(models, seed=0)
    settings = load_settings(environ={}).with_(
        brokers=broker.bootstrap, profile="embedded", topic_prefix=f"w{uuid.uuid4().hex[:8]}", partitions=2,
        web_port=free_port(), group=f"g{uuid.uuid4().hex[:8]}", k=10, model_poll_s=1.0, metrics_interval_s=1.0,
        data_dir=str(tmp / "data"), batch_within_s=0.05, trending_every_s=1.0,
    )
    process = WorkerProcess(settings, models, tmp / "worker.log")
    w = Worker(settings, process, models, version)
    try:
        process.wait_for_log("worker ready")
        yield w
    finally:
        code = process.stop(signal.SIGTERM)
    assert code == 0, f"worker did not shut down cleanly ({code}):\n{w.log_text()[-3000:]}"
    assert "shutting down: events in=" in w.log_text()


def produce(settings: Settings, rows: list[dict | bytes], topic: str | None = None) -> None:
    p = Producer(client_config(settings, "producer"))
    for row in rows:
        if isinstance(row, bytes):
            p.produce(topic or settings.events_topic, key=b"bad-user", value=row)
        else:
            key = row.get("user_id", row.get("item_id", ""))
            p.produce(topic or settings.events_topic, key=str(key).encode(), value=json.dumps(row).encode())
    assert p.flush(10) == 0


def view(user: str, item: str, n: int, **extra: object) -> dict:
    return {"user_id": user, "item_id": item, "type": "view", "time": T0 + n, "event_id": f"{user}-{n}", **extra}


def wait_for_list(settings: Settings, user: str, applied: int, timeout: float = 30.0) -> Recommendation:
    with RecommendationClient(settings, users=[user]) as client:
        rec = client.wait_for(lambda r: r.user_id == user and r.events_applied >= applied, timeout)
    assert rec is not None, f"no list for {user} with {applied} events in {timeout:.0f}s"
    return rec


def test_lists_follow_the_taste_a_user_shows(worker: Worker) -> None:
    catalog = make_catalog(SYNTH)
    for cluster in (0, 3):
        user = f"taste-{cluster}"
        items = [catalog.item_id(i) for i in catalog.items_in_cluster(cluster)[:6]]
        produce(worker.settings, [view(user, item, n) for n, item in enumerate(items)])
        rec = wait_for_list(worker.settings, user, applied=6)
        assert rec.events_applied == 6 and len(rec.items) == 10
        assert not set(items) & set(rec.item_ids)  # what they just saw is not offered back
        in_cluster = np.mean([catalog.cluster_of_item[catalog.item_index(i)] == cluster for i in rec.item_ids])
        assert in_cluster >= 0.7, (cluster, rec.item_ids)
        assert rec.model_version == worker.first_version and rec.last_event_id == f"{user}-5"


def test_bad_event_goes_to_the_dlq_and_the_next_one_is_applied(worker: Worker) -> None:
    s = worker.settings
    produce(s, [b"{not json", {"user_id": "dlq-user", "item_id": "i1"}, view("dlq-user", "i2", 0)])
    rec = wait_for_list(s, "dlq-user", applied=1)
    assert rec.events_applied == 1
    reasons = [r for r in read_dlq(s, 100, timeout=5) if "dlq-user" in (r["original"] or "") or
               r["original"] == "{not json"]
    assert len(reasons) == 2, f"DLQ holds {reasons}; worker log:\n{worker.log_text()[-2000:]}"
    assert [r["original"] for r in reasons] == ["{not json", json.dumps({"user_id": "dlq-user", "item_id": "i1"})]
    assert "not valid JSON" in reasons[0]["reason"] and "missing type, time" in reasons[1]["reason"]


def counted(settings: Settings, applied: float, timeout: float = 10.0) -> dict[str, float]:
    """The worker's /metrics once it counted ``applied`` events (it counts just after publishing)."""
    deadline = time.time() + timeout
    while (m := scrape(settings.web_port)).get("freshrec_events_applied_total", 0) < applied:
        assert time.time() < deadline, f"the worker counted {m.get('freshrec_events_applied_total')} < {applied}"
        time.sleep(0.1)
    return m


def test_replayed_events_are_applied_once(worker: Worker) -> None:
    s = worker.settings
    applied = scrape(s.web_port).get("freshrec_events_applied_total", 0)
    rows = [view("dup-user", f"i{n}", n) for n in range(4)]
    produce(s, rows)
    first = wait_for_list(s, "dup-user", applied=4)
    before = live_quality(counted(s, applied + 4))
    produce(s, rows[1:3] + [view("dup-user", "i9", 9)])  # two replays and one new event
    rec = wait_for_list(s, "dup-user", applied=5)
    assert rec.events_applied == 5 and rec.last_event_id == "dup-user-9"
    # live quality: the new event is one point against the list it met; the replays are none
    after = live_quality(counted(s, applied + 5))
    assert after["points"] - before["points"] == 1
    assert after["hits"] - before["hits"] == int("i9" in first.item_ids)
    mine = after["by_model"][worker.first_version]
    assert 0 < mine["points"] and 0 <= mine["hits"] <= mine["points"]  # earlier tests' users count too


def test_unavailable_item_leaves_every_later_list(worker: Worker) -> None:
    s = worker.settings
    catalog = make_catalog(SYNTH)
    cluster_items = [catalog.item_id(i) for i in catalog.items_in_cluster(1)]
    seen, target = cluster_items[1:5], cluster_items[0]
    produce(s, [view("before-user", item, n) for n, item in enumerate(seen)])
    assert target in wait_for_list(s, "before-user", applied=4).item_ids  # control: it is recommended
    produce(s, [{"item_id": target, "event": "unavailable"}], topic=s.items_topic)
    deadline = time.time() + 20
    while "catalog: " + target not in worker.log_text():
        assert time.time() < deadline, "catalog update not applied"
        time.sleep(0.2)
    for user in ("after-1", "after-2"):
        produce(s, [view(user, item, n) for n, item in enumerate(seen)])
        assert target not in wait_for_list(s, user, applied=4).item_ids
    produce(s, [{"item_id": target, "event": "available"}], topic=s.items_topic)
    deadline = time.time() + 20
    while worker.log_text().count("catalog: " + target) < 2:
        assert time.time() < deadline, "catalog update not applied"
        time.sleep(0.2)
    produce(s, [view("after-3", item, n) for n, item in enumerate(seen)])
    assert target in wait_for_list(s, "after-3", applied=4).item_ids


def test_newer_model_version_is_served_without_a_restart(worker: Worker) -> None:
    s = worker.settings
    newer = _train(worker.models, seed=1)
    deadline = time.time() + 30
    while f"-> {newer} without a restart" not in worker.log_text():
        assert worker.proc.poll() is None and time.time() < deadline, worker.log_text()[-2000:]
        time.sleep(0.2)
    produce(s, [view("late-user", "i3", 0)])
    rec = wait_for_list(s, "late-user", applied=1)
    assert rec.model_version == newer != worker.first_version


def read_dlq(settings: Settings, n: int, timeout: float = 30.0) -> list[dict]:
    consumer = Consumer(client_config(settings, "consumer", **{"group.id": f"dlq-{uuid.uuid4().hex[:6]}"}))
    consumer.assign([TopicPartition(settings.dlq_topic, 0, OFFSET_BEGINNING)])  # no group join to wait for
    records, deadline = [], time.time() + timeout
    try:
        while len(records) < n and time.time() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                records.append(json.loads(msg.value()))
    finally:
        consumer.close()
    return records


def test_hostile_messages_are_dead_lettered_and_the_stream_goes_on(worker: Worker) -> None:
    """The three messages that used to stop a worker for good, and more, then good events."""
    s = worker.settings
    now = time.time()
    user = "fuzz-user"
    good = {"user_id": user, "item_id": "i1", "type": "view", "time": now - 60}
    hostile: list[tuple[bytes, str]] = [
        (b"[" * 100_000 + b"]" * 100_000, "over the limit"),
        (b"[" * 30_000 + b"]" * 30_000, "depth limit"),
        (json.dumps({**good, "quantity": 1e400}).replace("Infinity", "1e400").encode(), "infinity"),
        (json.dumps({**good, "quantity": 1e9}).encode(), "quantity"),
        (json.dumps({**good, "time": 1e12}).encode(), "broker time"),
        (json.dumps({**good, "time": 100}).encode(), "FRESHREC_MIN_EVENT_TIME"),
        (json.dumps({**good, "weight": 1e308}).encode(), "weight"),
        (json.dumps({**good, "price": -5}).encode(), "price"),
        (json.dumps({**good, "item_id": "x" * 5000}).encode(), "characters"),
        (json.dumps({**good, "item_id": ["a", "b"]}).encode(), "item_id must be"),
        (json.dumps({**good, "type": {"$gt": ""}}).encode(), "unknown event type"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (json.dumps({"command": "drop", "user_id": user}).encode(), "unknown command"),
    ]
    p = Producer(client_config(s, "producer", **{"message.max.bytes": 4_000_000}))
    for value, _ in hostile:
        p.produce(s.events_topic, key=user.encode(), value=value)
    # over the producer's 1 MB as a dead letter: it used to fail every retry and stop the worker
    p.produce(s.events_topic, key=user.encode(), value=b'{"user_id":"' + b"x" * 2_000_000 + b'"}')
    p.produce(s.events_topic, key=b"k" * 500_000, value=b"\x00 a hostile key")
    for n in range(3):  # good events after the poison; a cold user after the far-future time
        p.produce(s.events_topic, key=user.encode(), value=json.dumps({**good, "item_id": f"i{n}",
                                                                        "time": now - 50 + n}).encode())
    assert p.flush(10) == 0
    rec = wait_for_list(s, user, applied=3)
    assert rec.events_applied == 3 and len(rec.items) == 10
    # the cold user comes after: a batch's lists see the global state (trending) of the batches before
    p.produce(s.events_topic, key=b"fuzz-cold", value=json.dumps(
        {"user_id": "fuzz-cold", "item_id": "no-such-item", "type": "view", "time": now - 10}).encode())
    assert p.flush(10) == 0
    cold = wait_for_list(s, "fuzz-cold", applied=1)
    # trending (what the poison time would have broken) still answers a cold user, with finite scores
    assert cold.items and all(np.isfinite(score) for _, score in cold.items)
    reasons = [r["reason"] for r in read_dlq(s, 100, timeout=8)]
    for _, why in hostile:
        assert any(why in r for r in reasons), (why, reasons)
    big = [r for r in read_dlq(s, 100, timeout=8) if r.get("original_bytes") == 2_000_014]
    assert big and big[0]["truncated"] and len(big[0]["original"]) == 65536
    assert worker.proc.poll() is None


def test_health_and_readiness(worker: Worker) -> None:
    import urllib.request

    for path in ("/health", "/ready"):
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.settings.web_port}{path}", timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())["ok"] is True


def test_erase_forgets_the_user_end_to_end(worker: Worker) -> None:
    from streams.cli.erase import erase_users

    s = worker.settings
    user = "erase-me"
    produce(s, [view(user, f"i{n}", n) for n in range(3)])
    assert wait_for_list(s, user, applied=3).events_applied == 3
    assert erase_users(s, [user], wait_s=30) == {user}
    with RecommendationClient(s, users=[user]) as client:  # compacting subscribers see the tombstone
        deadline = time.time() + 10
        while user not in client.erased and time.time() < deadline:
            client.poll(0.2)
        assert user in client.erased and user not in client.latest
    with RecommendationClient(s, users=[user], from_beginning=False) as client:
        produce(s, [view(user, "i7", 10)])
        rec = client.wait_for(lambda r: r.user_id == user, 30)
    assert rec is not None and rec.events_applied == 1 and rec.last_event_id == f"{user}-10"  # a new history, from nothing
    assert "erased user 'erase-me'" in worker.log_text()


def test_erase_then_new_events_in_one_batch_keeps_the_new_history(worker: Worker) -> None:
    from streams.codec import encode_erase

    s = worker.settings
    user = "erase-and-return"
    produce(s, [view(user, f"i{n}", n) for n in range(3)])
    assert wait_for_list(s, user, applied=3).events_applied == 3
    p = Producer(client_config(s, "producer"))  # one flush: the erase and the next event share a batch
    p.produce(s.events_topic, key=user.encode(), value=encode_erase(user))
    p.produce(s.events_topic, key=user.encode(), value=json.dumps(view(user, "i8", 20)).encode())
    assert p.flush(10) == 0
    deadline = time.time() + 30
    while f"erased user '{user}'" not in worker.log_text():
        assert time.time() < deadline, worker.log_text()[-2000:]
        time.sleep(0.2)
    with RecommendationClient(s, users=[user]) as client:  # the newest record per user wins
        deadline = time.time() + 10
        while time.time() < deadline:
            client.poll(0.2)
        rec = client.latest.get(user)
    assert rec is not None and user not in client.erased
    assert rec.events_applied == 1 and rec.last_event_id == f"{user}-20"


def test_the_worker_publishes_the_trending_list_serve_falls_back_to(worker: Worker) -> None:
    from streams.reader import TopicReader
    from streams.serve.store import decode_trending

    s = worker.settings
    produce(s, [view("trend-user", "i3", 1), view("trend-user", "i4", 2)])
    wait_for_list(s, "trend-user", applied=2)
    deadline = time.time() + 20
    got = None
    while got is None or not got.item_ids:
        assert time.time() < deadline, "no trending list published"
        with TopicReader(s, s.trending_topic, until="end", idle_s=1.5, timeout_s=20) as reader:
            values = [r.value for r in reader if r.key == b"global" and r.value]
        got = decode_trending(values[-1]) if values else None
    # the worker's trending items, best first (which ones depends on every test's events so far)
    assert got.model_version >= worker.first_version and len(got.item_ids) == len(set(got.item_ids)) <= 100
    assert list(got.scores) == sorted(got.scores, reverse=True)

"""Replay into, and tail out of, a real (embedded) broker."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from model_core.offline.logs import ReadReport
from streams.broker import EmbeddedBroker
from streams.cli.broker import add_parser as add_broker_parser
from streams.cli.replay import ReplayStats, replay, replay_event_id
from streams.cli.replay import add_parser as add_replay_parser
from streams.cli.replay import run as run_replay
from streams.cli.tail import add_parser as add_tail_parser
from streams.cli.tail import run as run_tail
from streams.codec import Recommendation, decode_event, encode_recommendation
from streams.errors import BrokerUnavailableError
from streams.kafka import client_config, ensure_topics
from streams.recommendation_client import RecommendationClient, format_recommendation
from streams.settings import Settings

T0_MS = 1_433_221_332_117
N_VALID = 200
BAD_ROWS = [
    "1433221332999,257597,view\n",  # too few fields
    "notatime,257597,view,355908,\n",  # bad timestamp
    "1433221333000,257597,wishlist,355908,\n",  # unknown event type
    "1433221333001,,view,355908,\n",  # empty visitor id
]


def write_retailrocket(path: Path, n: int = N_VALID, users: int = 7) -> Path:
    """A RetailRocket events.csv: n valid rows over ``users`` users (interleaved), plus BAD_ROWS."""
    types = ["view", "view", "view", "addtocart", "transaction"]
    lines = ["timestamp,visitorid,event,itemid,transactionid\n"]
    for i in range(n):
        kind = types[i % len(types)]
        tx = str(1000 + i) if kind == "transaction" else ""
        lines.append(f"{T0_MS + 1000 * i},{100 + (i * 3) % users},{kind},{5000 + i % 37},{tx}\n")
        if i % 50 == 10:
            lines.append(BAD_ROWS[(i // 50) % len(BAD_ROWS)])
    path.write_text("".join(lines))
    return path


def read_topic(settings: Settings, topic: str, n: int, timeout: float = 15.0) -> list[tuple[bytes, bytes, int]]:
    """The first ``n`` messages of ``topic`` (all partitions) as (key, value, partition)."""
    consumer = Consumer(client_config(settings, "consumer", **{"group.id": "test-reader",
                                                              "enable.auto.commit": False}))
    try:
        parts = consumer.list_topics(topic, timeout=5).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[tuple[bytes, bytes, int]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append((msg.key(), msg.value(), msg.partition()))
        # nothing beyond n arrives shortly after
        extra = consumer.poll(0.3)
        assert extra is None or extra.error() is not None, "more messages than expected"
        return out
    finally:
        consumer.close()


def closed_port_settings(settings: Settings) -> Settings:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return settings.with_(brokers=f"127.0.0.1:{port}")


# ---------------------------------------------------------------------- broker


def test_broker_fixture_is_up(broker: EmbeddedBroker, settings: Settings) -> None:
    assert broker.is_running()
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert broker.started_in is not None and broker.started_in < 10
    assert broker.settings(settings).brokers == broker.bootstrap
    assert broker.settings(settings.with_(profile="production")).profile == "embedded"


def test_broker_start_stop_and_port_in_use(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerUnavailableError, match="already in use"):
        EmbeddedBroker(broker.port).start(timeout=5)
    other = EmbeddedBroker()
    with other:
        assert other.is_running() and other.port != broker.port
        pid = other.pid
    assert not other.is_running() and other.pid is None and pid is not None
    other.stop()  # idempotent


# ---------------------------------------------------------------------- replay


def test_replay_delivers_every_valid_row_in_user_order(tmp_path: Path, settings: Settings) -> None:
    log = write_retailrocket(tmp_path / "events.csv")
    report = ReadReport(str(log))
    stats = replay(log, settings, report=report)
    assert isinstance(stats, ReplayStats)
    assert (stats.sent, stats.delivered, stats.failed, stats.skipped) == (N_VALID, N_VALID, 0, len(BAD_ROWS))
    assert report.format == "retailrocket" and report.events == N_VALID and report.skipped == len(BAD_ROWS)
    assert f"{N_VALID} delivered" in stats.summary() and stats.events_per_s > 0

    got = read_topic(settings, settings.events_topic, N_VALID)
    assert len(got) == N_VALID
    events = [decode_event(v) for _, v, _ in got]
    assert all(k.decode() == e.user_id for (k, _, _), e in zip(got, events))
    # one user -> one partition, and per-user order is the file order (times increase in the file)
    partitions: dict[str, set[int]] = defaultdict(set)
    per_user: dict[str, list[float]] = defaultdict(list)
    for (_, _, p), e in zip(got, events):
        partitions[e.user_id].add(p)
        per_user[e.user_id].append(e.time)
    assert len(per_user) == 7 and all(len(ps) == 1 for ps in partitions.values())
    assert len({p for ps in partitions.values() for p in ps}) == 2  # both partitions used
    assert all(times == sorted(times) for times in per_user.values())
    assert len({e.event_id for e in events}) == N_VALID
    assert all(e.event_id and e.event_id.startswith("r-") for e in events)
    assert sum(e.type.value == "purchase" for e in events) == N_VALID // 5


def test_replay_twice_gives_the_same_event_ids(tmp_path: Path, settings: Settings) -> None:
    log = write_retailrocket(tmp_path / "events.csv", n=60, users=3)
    copy = tmp_path / "elsewhere" / "renamed.csv"  # ids depend on content, not the file name
    copy.parent.mkdir()
    copy.write_bytes(log.read_bytes())
    assert replay(log, settings).delivered == 60
    assert replay(copy, settings).delivered == 60
    got = read_topic(settings, settings.events_topic, 120)
    by_user: dict[str, list[str]] = defaultdict(list)
    for _, v, _ in got:
        e = decode_event(v)
        by_user[e.user_id].append(e.event_id)
    for ids in by_user.values():
        half = len(ids) // 2
        assert ids[:half] == ids[half:]  # same ids, same order, for every user
    assert len({i for ids in by_user.values() for i in ids}) == 60


def test_replay_event_id_rule() -> None:
    from model_core.events import Event, EventType

    e = Event("u1", "i1", EventType.VIEW, 1.5)
    assert replay_event_id(e, 3) == replay_event_id(Event("u1", "i1", EventType.VIEW, 1.5, event_id="x"), 3)
    assert replay_event_id(e, 3) != replay_event_id(e, 4)
    assert replay_event_id(e, 3) != replay_event_id(Event("u1", "i2", EventType.VIEW, 1.5), 3)


def test_replay_keeps_ids_the_log_has(tmp_path: Path, settings: Settings) -> None:
    log = tmp_path / "events.jsonl"
    rows = [{"user_id": f"u{i % 2}", "item_id": f"i{i}", "type": "view", "time": 1000 + i, "event_id": f"e{i}"}
            for i in range(5)]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    stats = replay(log, settings)
    assert (stats.delivered, stats.skipped) == (5, 1)
    got = read_topic(settings, settings.events_topic, 5)
    assert sorted(decode_event(v).event_id or "" for _, v, _ in got) == [f"e{i}" for i in range(5)]


def test_replay_rate_is_respected(tmp_path: Path, settings: Settings) -> None:
    log = write_retailrocket(tmp_path / "events.csv", n=50, users=5)
    t = time.monotonic()
    stats = replay(log, settings, rate=100)
    took = time.monotonic() - t
    assert stats.delivered == 50
    assert 0.45 <= stats.seconds and took < 5.0
    assert stats.events_per_s < 115


def test_replay_rate_sleeps_between_events(tmp_path: Path, settings: Settings) -> None:
    # 1 ms between events: librdkafka's poll rounds shorter waits down to 0 and returns at
    # once, so polling out the wait would spin a core the worker and broker need
    log = write_retailrocket(tmp_path / "events.csv", n=2000, users=20)
    wall, cpu = time.monotonic(), time.process_time()
    stats = replay(log, settings, rate=1000)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    assert stats.delivered == 2000 and stats.seconds >= 1.9
    assert cpu < 0.5 * wall, f"replay used {cpu:.2f} s of CPU in {wall:.2f} s"


def test_replay_speedup_follows_event_time(tmp_path: Path, settings: Settings) -> None:
    log = tmp_path / "events.jsonl"  # 5 events 1 s apart in event time, the last group out of order
    times = [0, 1, 2, 3, 1.5]
    log.write_text("".join(json.dumps({"user_id": "u", "item_id": f"i{i}", "type": "view",
                                       "time": 1_700_000_000 + t}) + "\n" for i, t in enumerate(times)))
    stats = replay(log, settings, speedup=10)  # 3 s of positive gaps / 10 = 0.3 s
    assert stats.delivered == 5
    assert 0.25 <= stats.seconds < 2.0


def test_replay_pace_arguments_are_checked(tmp_path: Path, settings: Settings) -> None:
    from model_core.errors import ConfigError

    log = write_retailrocket(tmp_path / "events.csv", n=3)
    with pytest.raises(ConfigError):
        replay(log, settings, rate=10, speedup=2)
    with pytest.raises(ConfigError):
        replay(log, settings, rate=0)


def test_replay_unreachable_broker_fails_fast(tmp_path: Path, settings: Settings) -> None:
    log = write_retailrocket(tmp_path / "events.csv", n=5)
    t = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match="no Kafka broker answered"):
        replay(log, closed_port_settings(settings), connect_timeout=1.0)
    assert time.monotonic() - t < 5.0


def test_replay_cli(tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="freshrec")
    sub = parser.add_subparsers(dest="command")
    add_replay_parser(sub)
    log = write_retailrocket(tmp_path / "events.csv", n=20, users=2)
    args = parser.parse_args(["replay", "--log", str(log), "--brokers", settings.brokers, "--profile", "embedded",
                              "--topic-prefix", settings.topic_prefix, "--max", "--quiet"])
    assert (args.brokers, args.profile, args.topic_prefix) == (settings.brokers, "embedded", settings.topic_prefix)
    assert run_replay(args, settings) == 0
    assert "20 delivered, 0 failed, 1 skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the pace flags exclude each other
        parser.parse_args(["replay", "--log", str(log), "--rate", "5", "--max"])


# ---------------------------------------------------------------------- tail


def rec(user: str, published_at: float, items: list[tuple[str, float]], n: int = 1) -> Recommendation:
    return Recommendation(user_id=user, items=items, model_version="20261125T000000Z", index_version=17,
                          events_applied=n, last_event_id=f"e{n}", last_event_time=published_at - 1,
                          published_at=published_at)


def publish(settings: Settings, messages: list[tuple[str, bytes]]) -> None:
    ensure_topics(settings)
    producer = Producer(client_config(settings, "producer"))
    for key, value in messages:
        producer.produce(settings.recommendations_topic, key=key.encode(), value=value)
    assert producer.flush(10) == 0


def test_client_keeps_the_newest_list_per_user(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    publish(settings, [
        ("u1", encode_recommendation(rec("u1", now - 3, [("i1", 0.9)], 1))),
        ("u2", encode_recommendation(rec("u2", now - 2, [("i7", 0.5)], 1))),
        ("u1", encode_recommendation(rec("u1", now - 1, [("i2", 0.8), ("i3", 0.7)], 2))),
        ("u1", b"not json at all"),
        ("u1", b"[1, 2]"),
        ("u2", encode_recommendation(rec("u2", now - 5, [("old", 0.1)], 0))),  # older, arrives later
    ])
    with caplog.at_level(logging.WARNING, logger="streams.recommendation_client"), RecommendationClient(settings) as client:
        got = client.wait_for(lambda r: r.user_id == "u1" and r.events_applied == 2, timeout=10)
        assert got is not None and got.item_ids == ["i2", "i3"]
        client.drain(idle=0.5)
        assert set(client.latest) == {"u1", "u2"}
        assert client.latest["u1"].items == [("i2", 0.8), ("i3", 0.7)]
        assert client.latest["u2"].item_ids == ["i7"]  # newest by published_at, not by arrival
        assert client.received == 4 and client.skipped == 2
        # already seen: answered from latest at once
        assert client.wait_for(lambda r: r.user_id == "u2", timeout=0) is not None
        assert client.poll(0.2) is None
    assert "skipping undecodable message" in caplog.text


def test_client_user_filter_and_new_lists(settings: Settings) -> None:
    now = time.time()
    publish(settings, [(u, encode_recommendation(rec(u, now - 10, [("i1", 0.5)]))) for u in ("a", "b", "c")])
    with RecommendationClient(settings, users={"b"}) as client:
        client.drain(idle=0.5)
        assert set(client.latest) == {"b"}
    with RecommendationClient(settings, from_beginning=False) as client:
        publish(settings, [("a", encode_recommendation(rec("a", time.time(), [("fresh", 1.0)], 5)))])
        got = client.wait_for(lambda r: True, timeout=10)
        assert got is not None and got.item_ids == ["fresh"]
        client.drain(idle=0.3)
        assert list(client.latest) == ["a"]


def test_client_in_a_group_resumes_where_the_group_stopped(settings: Settings) -> None:
    now = time.time()
    group = f"{settings.topic_prefix}-tail"
    publish(settings, [(u, encode_recommendation(rec(u, now - 10, [("i1", 0.5)]))) for u in ("a", "b")])
    with RecommendationClient(settings, group=group) as client:  # joins the group: takes a few seconds here
        assert client.wait_for(lambda r: r.user_id == "b", timeout=30) is not None
        client.drain(idle=0.5)
        assert set(client.latest) == {"a", "b"}
    publish(settings, [("c", encode_recommendation(rec("c", time.time(), [("i2", 0.5)])))])
    with RecommendationClient(settings, group=group) as client:  # the group committed a and b on close
        assert client.wait_for(lambda r: r.user_id == "c", timeout=30) is not None
        client.drain(idle=0.5)
        assert set(client.latest) == {"c"}


def test_client_unreachable_broker(settings: Settings) -> None:
    with pytest.raises(BrokerUnavailableError):
        RecommendationClient(closed_port_settings(settings), connect_timeout=1.0)


def test_tail_cli_prints_latest_per_user(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    publish(settings, [
        ("u1", encode_recommendation(rec("u1", now - 2, [("i1", 0.9)]))),
        ("u1", encode_recommendation(rec("u1", now - 1, [("i9", 0.93), ("i4", 0.91)], 42))),
        ("u2", encode_recommendation(rec("u2", now - 1, [("i5", 0.5)]))),
    ])
    parser = argparse.ArgumentParser(prog="freshrec")
    sub = parser.add_subparsers(dest="command")
    add_tail_parser(sub)
    add_broker_parser(sub)
    common = ["--brokers", settings.brokers, "--topic-prefix", settings.topic_prefix, "--idle", "0.5"]
    assert run_tail(parser.parse_args(["tail", *common]), settings) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("u1  [model 20261125T000000Z idx 17, 42 events, ")
    assert out[0].endswith("s old]  i9 (0.93), i4 (0.91)")
    assert run_tail(parser.parse_args(["tail", *common, "--user", "u2", "--json"]), settings) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["user_id"] for x in lines] == ["u2"]


def test_format_recommendation() -> None:
    r = rec("u1", 1000.0, [(f"i{i}", 1 - i / 100) for i in range(12)], 42)
    line = format_recommendation(r, now=1000.12, max_items=2)
    assert line == "u1  [model 20261125T000000Z idx 17, 42 events, 0.12 s old]  i0 (1.00), i1 (0.99), ... (+10)"
    assert "2.0 h old" in format_recommendation(r, now=1000 + 7200)

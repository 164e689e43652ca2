"""The one topic reader against the real (embedded) broker: each way to stop, a partition
subset, a start time, a group, and its errors (timeout, a fatal error, no topic, no broker)."""

from __future__ import annotations

import time
from typing import Any
from unittest.mock import MagicMock

import pytest
from confluent_kafka import KafkaError, Message, Producer

from streams.errors import BrokerUnavailableError, ConfigError
from streams.kafka import client_config, ensure_topics
from streams.reader import MARKER_KEY, Since, TopicReader
from streams.settings import Settings


def _send(settings: Settings, topic: str, rows: list[tuple[bytes | None, bytes | None, int]],
          timestamp_ms: int = 0) -> None:
    """(key, value, partition) rows, in order."""
    p = Producer(client_config(settings, "producer"))
    for key, value, part in rows:
        p.produce(topic, value, key, partition=part, timestamp=timestamp_ms)
    assert p.flush(10) == 0


def _rows(n: int, parts: int = 2, tag: str = "v") -> list[tuple[bytes | None, bytes | None, int]]:
    return [(f"u{i}".encode(), f"{tag}{i}".encode(), i % parts) for i in range(n)]


@pytest.fixture
def topic(settings: Settings) -> str:
    ensure_topics(settings)
    return settings.state_topic


def test_marker_read_returns_everything_written_before_it_and_no_marker(settings: Settings, topic: str) -> None:
    _send(settings, topic, _rows(40) + [(b"u3", None, 1)])  # a tombstone is a record too
    for _ in range(2):  # the second read passes the first read's markers without stopping
        with TopicReader(settings, topic, until="marker", timeout_s=20, name="test") as reader:
            got = [r for batch in reader.batches() for r in batch]
        assert reader.done and reader.records == len(got) == 41
        assert all(r.key != MARKER_KEY for r in got)
        assert {(r.key, r.value) for r in got} == {(k, v) for k, v, _ in _rows(40)} | {(b"u3", None)}
        assert all(r.partition == int(r.key[1:]) % 2 for r in got if r.key)  # type: ignore[index]
        assert all(r.timestamp is not None and abs(r.timestamp - time.time()) < 60 for r in got)
        offsets = [r.offset for r in got if r.partition == 0]
        assert offsets == sorted(offsets)


def test_drain_stops_after_idle_and_a_partition_subset_from_offsets(settings: Settings, topic: str) -> None:
    _send(settings, topic, _rows(30))
    t0 = time.monotonic()
    with TopicReader(settings, topic, until="drain", idle_s=0.5, timeout_s=20) as reader:
        got = list(reader)
    assert len(got) == 30 and time.monotonic() - t0 < 10
    with TopicReader(settings, topic, partitions=[1], until="drain", idle_s=0.5) as reader:
        assert {r.partition for r in reader} == {1} and reader.records == 15
    with TopicReader(settings, topic, partitions={1}, start={1: 10}, until="drain", idle_s=0.5) as reader:
        assert [r.offset for r in reader] == list(range(10, 15))
    with pytest.raises(ConfigError, match="no partitions"):
        TopicReader(settings, topic, partitions=[5], until="drain")


def test_end_read_stops_at_what_the_topic_held_when_it_began(settings: Settings, topic: str) -> None:
    _send(settings, topic, _rows(20))
    with TopicReader(settings, topic, until="end", idle_s=0.5, timeout_s=20) as reader:
        assert reader.expected is not None and reader.expected > 0
        time.sleep(0.05)
        _send(settings, topic, _rows(10, tag="late"))  # written after the read began
        got = list(reader)
    assert sorted(r.value for r in got) == sorted(v for _, v, _ in _rows(20))  # type: ignore[type-var]
    with TopicReader(settings, settings.items_topic, until="end") as empty:  # nothing to read: done at once
        assert empty.done and list(empty) == []


def test_start_at_a_time_skips_older_records(settings: Settings, topic: str) -> None:
    now_ms = int(time.time() * 1000)
    _send(settings, topic, _rows(10, tag="old"), timestamp_ms=now_ms - 3_600_000)
    _send(settings, topic, _rows(6, tag="new"))
    with TopicReader(settings, topic, start=Since(now_ms / 1000 - 60), until="drain", idle_s=0.5) as reader:
        assert sorted(r.value for r in reader) == sorted(v for _, v, _ in _rows(6, tag="new"))  # type: ignore[type-var]


def test_group_reader_resumes_from_its_commits(settings: Settings, topic: str) -> None:
    _send(settings, topic, _rows(8))
    group = f"{settings.topic_prefix}-readers"
    with TopicReader(settings, topic, group=group, until="drain", idle_s=1.0, timeout_s=60) as reader:
        assert len(list(reader)) == 8
        reader._consumer.commit(asynchronous=False)  # auto-commit would too, on its timer
    _send(settings, topic, _rows(3, tag="more"))
    with TopicReader(settings, topic, group=group, until="drain", idle_s=1.0, timeout_s=60) as reader:
        assert sorted(r.value for r in reader) == [b"more0", b"more1", b"more2"]
    with pytest.raises(ConfigError):
        TopicReader(settings, topic, group=group, until="marker")


def test_a_read_that_does_not_finish_in_time_raises(settings: Settings, topic: str) -> None:
    _send(settings, topic, _rows(4))
    with TopicReader(settings, topic, until="drain", idle_s=30, timeout_s=1.0) as reader, \
            pytest.raises(BrokerUnavailableError, match="not finished within 1s"):
        list(reader)
    with TopicReader(settings, topic, until="end", idle_s=30, timeout_s=None, stall_s=1.0) as reader, \
            pytest.raises(BrokerUnavailableError, match="nothing arrived for 1s"):
        list(reader)  # embedded: the ends are under-reported, so only quiet could end it


class _FatalOnce:
    """The seam: the real consumer, except that its next fetch returns a fatal error event."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        bad = MagicMock(spec_set=Message)
        bad.error.return_value = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
        transient = MagicMock(spec_set=Message)
        transient.error.return_value = KafkaError(KafkaError._TRANSPORT, "reconnecting")
        return [transient, *self.consumer.consume(num_messages, timeout=timeout), bad]

    def close(self) -> None:
        self.consumer.close()


def test_error_events_skipped_and_a_fatal_one_raises(settings: Settings, topic: str) -> None:
    _send(settings, topic, _rows(4))
    reader = TopicReader(settings, topic, until="drain", idle_s=0.5)
    reader._consumer = _FatalOnce(reader._consumer)
    with reader, pytest.raises(BrokerUnavailableError, match="fenced"):
        list(reader)
    assert reader.errors == 1  # the transient one, skipped


def test_no_topic_and_no_broker_are_one_clear_error(settings: Settings) -> None:
    with pytest.raises(BrokerUnavailableError, match="does not exist"):
        TopicReader(settings, f"{settings.topic_prefix}.nothing", until="drain")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BrokerUnavailableError, match="no Kafka broker answered"):
        TopicReader(settings.with_(brokers=f"127.0.0.1:{port}"), "t", until="drain", connect_timeout_s=1.0)

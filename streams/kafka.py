"""confluent-kafka clients, their settings per profile, and topic creation."""

from __future__ import annotations

import logging
from typing import Any

from streams.errors import BrokerUnavailableError, ConfigError
from streams.settings import Settings

__all__ = ["EMBEDDED_FETCH_WAIT_MS", "check_brokers", "client_config", "ensure_topics", "is_error", "produce", "topic_specs"]

log = logging.getLogger(__name__)

EMBEDDED_FETCH_WAIT_MS = 20
"""Fetch wait on the embedded broker, which answers a fetch only when its wait expires: each hop
waits up to this long (20 ms keeps freshness under 100 ms; see docs/broker.md)."""


EMBEDDED_LINGER_MS = 20
"""Producer linger on the embedded broker, whose fetches walk every batch stored in the partition:
fewer, larger batches keep its CPU down. In the demo (900 events/s) with 5 ms the broker's CPU
grew from 40% to a full core of the two within a minute (docs/hot_path.md)."""


def client_config(settings: Settings, role: str, **extra: Any) -> dict[str, Any]:
    """confluent-kafka configuration for ``role`` in ``producer``, ``consumer``, ``admin``.

    The embedded profile shortens fetch waits and group timeouts: the embedded
    broker answers a fetch only when its wait expires, and its group join waits
    for the whole session timeout.
    """
    # librdkafka's own log lines go through Python logging, in the same format as ours
    conf: dict[str, Any] = {"bootstrap.servers": settings.brokers, "client.id": f"freshrec-{role}",
                            "logger": logging.getLogger("freshrec.kafka.client")}
    if settings.kafka_debug:
        conf["debug"] = settings.kafka_debug
    if role == "producer":
        # murmur2 is the Java client's and aiokafka's (Faust's) partitioner: a user's events
        # land in the same partition whichever client produced them.
        conf.update({"enable.idempotence": True, "linger.ms": 5, "partitioner": "murmur2_random"})
        if settings.profile == "embedded":  # fewer, larger batches: its fetches scan every stored one
            conf["linger.ms"] = EMBEDDED_LINGER_MS
    elif role == "consumer":
        conf.update({"enable.auto.commit": True, "auto.offset.reset": "earliest"})
        if settings.profile == "embedded":
            conf.update({"fetch.wait.max.ms": EMBEDDED_FETCH_WAIT_MS, "session.timeout.ms": 6000,
                         "heartbeat.interval.ms": 1000})
    elif role != "admin":
        raise ConfigError(f"unknown client role {role!r}")
    conf.update(extra)
    return conf


def produce(producer: Any, topic: str, value: bytes | None, key: bytes | None, *, partition: int = -1,
            on_delivery: Any = None, headers: list[tuple[str, bytes]] | None = None) -> None:
    """Queue one message, waiting while librdkafka's local queue is full (deliveries drain it);
    BrokerUnavailableError when the client refuses it for good."""
    from confluent_kafka import KafkaException

    while True:
        try:
            producer.produce(topic, value, key, partition=partition, on_delivery=on_delivery, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)
        except KafkaException as exc:
            raise BrokerUnavailableError(f"cannot produce to {topic}: {exc.args[0]}") from None


def is_error(msg: Any, topic: str) -> bool:
    """True when a consumed message is an error event, not a record (skip it); raises
    BrokerUnavailableError when the error is fatal or the topic is gone."""
    from confluent_kafka import KafkaError

    err = msg.error()
    if err is None:
        return False
    if err.fatal() or err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
        raise BrokerUnavailableError(f"reading {topic}: {err.str()}")
    return True


DELTA_MAX_BYTES = 1_000_000
"""Largest item-side delta record (a larger delta is split in order; Kafka's default limit is ~1 MB)."""


def topic_specs(settings: Settings) -> dict[str, dict[str, Any]]:
    """Name -> partitions and config of every topic freshrec uses."""
    p = settings.partitions
    return {
        settings.events_topic: {"partitions": p, "config": {}},
        settings.dlq_topic: {"partitions": 1, "config": {}},
        settings.items_topic: {"partitions": 1, "config": {}},
        settings.recommendations_topic: {"partitions": p, "config": {"cleanup.policy": "compact"}},
        settings.trending_topic: {"partitions": 1, "config": {"cleanup.policy": "compact"}},
        settings.state_topic: {"partitions": p, "config": {"cleanup.policy": "compact"}},
        settings.deltas_topic: {"partitions": 1, "config": {
            "retention.ms": str(int(settings.deltas_retention_s * 1000)), "max.message.bytes": str(DELTA_MAX_BYTES)}},
    }


def check_brokers(settings: Settings, timeout: float = 10.0) -> list[str]:
    """Existing topic names; BrokerUnavailableError with a clear line if none answers."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # log_level 0: connection failures are reported once, below, not as librdkafka noise
    admin = AdminClient(client_config(settings, "admin", log_level=0))
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerUnavailableError(
            f"no Kafka broker answered at {settings.brokers} within {timeout:.0f}s "
            f"(start one with `freshrec broker`, or set --brokers / FRESHREC_BROKERS): {exc.args[0]}"
        ) from None
    return sorted(md.topics)


def ensure_topics(settings: Settings, timeout: float = 15.0) -> list[str]:
    """Create freshrec's topics where absent; returns the names created."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    existing = set(check_brokers(settings, timeout))
    wanted = [
        NewTopic(name, num_partitions=spec["partitions"], replication_factor=settings.replication,
                 config=spec["config"])
        for name, spec in topic_specs(settings).items()
        if name not in existing
    ]
    if not wanted:
        return []
    admin = AdminClient(client_config(settings, "admin"))
    created = []
    for name, fut in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            fut.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerUnavailableError(f"cannot create topic {name}: {exc.args[0].str()}") from None
    if created:
        log.info("created topics %s", ", ".join(created))
    return created

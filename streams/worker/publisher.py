"""The worker's output: one confluent-kafka (librdkafka) producer for lists, state and the DLQ.

librdkafka queues a message in about a microsecond and batches in C. A batch's
messages are queued with ``produce`` and made durable with ``flush`` (on the
consumer thread, before the batch's offsets are committed), which raises
``PublishError`` if any of them was not delivered.
"""

from __future__ import annotations

import logging
from typing import Any

from streams.errors import BrokerUnavailableError
from streams.kafka import client_config, produce
from streams.settings import Settings

__all__ = ["PublishError", "Publisher"]

log = logging.getLogger("freshrec.publisher")


class PublishError(BrokerUnavailableError):
    """Messages of a batch were not delivered (the flush is retried, then the worker stops)."""


class Publisher:
    """``produce`` queues (non-blocking), ``flush`` waits until everything queued is delivered."""

    def __init__(self, settings: Settings, flush_timeout_s: float = 30.0) -> None:
        from confluent_kafka import Producer

        # no linger: the batch is flushed right after it is queued, so waiting buys nothing.
        # Reports for failed messages only: a report is a Python callback that needs the GIL, and
        # the flush waits while the compute thread holds it (one wait per message otherwise)
        self._producer = Producer(client_config(settings, "producer", **{"linger.ms": 0,
                                                                         "delivery.report.only.error": True}))
        self._timeout = flush_timeout_s
        self._failures: list[str] = []

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int = -1,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        produce(self._producer, topic, value, key, partition=partition, on_delivery=self._delivered,
                headers=headers)

    def flush(self) -> None:
        """Wait until everything queued is on the broker; PublishError if anything failed."""
        left = self._producer.flush(self._timeout)
        failures, self._failures = self._failures, []
        if left:
            failures.append(f"{left} messages still undelivered after {self._timeout:.0f}s")
        if failures:
            raise PublishError(f"{len(failures)} messages not delivered, e.g. {failures[0]}")

    def close(self) -> None:
        self._producer.flush(5)

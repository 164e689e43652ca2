"""The workers' per-user state: in memory for the partitions a worker owns, durable in a changelog.

The changelog (``Settings.state_topic``, compacted, as many partitions as the
events topic) holds one record per user: key = user id, value =
``UserHistory.encode()`` (a null value erases the user). A user's state lives
in the partition its events arrive on, so a worker that is assigned events
partition p owns changelog partition p.

Recovery reads a changelog partition from its start up to a marker record the
worker writes itself just before, so it never depends on the broker's end
offsets (the embedded broker under-reports them, which is what made Faust's
own table recovery stop early). A partition is dropped from memory when it is
revoked and read again in full when it comes back, so a worker never serves
state that another worker changed in between.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Collection, Iterable

from model_core.state import UserHistory
from streams.errors import BrokerUnavailableError
from streams.kafka import client_config, is_error
from streams.settings import Settings

__all__ = ["MARKER_KEY", "UserStateStore"]

log = logging.getLogger("freshrec.state")

MARKER_KEY = b"\x00freshrec-recovery-marker"
"""Key of the records that end a recovery read (never a user id: user ids are valid text)."""


class UserStateStore:
    """User id -> encoded ``UserHistory`` for each loaded partition.

    ``load`` blocks (run it off the event loop); the rest is in-memory and cheap.
    """

    def __init__(self, settings: Settings, timeout_s: float = 300.0) -> None:
        self.settings = settings
        self.topic = settings.state_topic
        self.timeout_s = timeout_s
        self._parts: dict[int, dict[str, bytes]] = {}
        self._generation: dict[int, int] = {}  # bumped when a partition is dropped

    def loaded(self, partition: int) -> bool:
        return partition in self._parts

    @property
    def partitions(self) -> set[int]:
        return set(self._parts)

    def users(self, partition: int) -> int:
        return len(self._parts.get(partition, ()))

    def get(self, partition: int, user_id: str) -> UserHistory:
        """A fresh copy of the user's state (a new, empty history for an unknown user)."""
        raw = self._parts[partition].get(user_id)
        return UserHistory(user_id) if raw is None else UserHistory.decode(user_id, raw)

    def put(self, partition: int, user_id: str, value: bytes) -> None:
        self._parts[partition][user_id] = value

    def delete(self, partition: int, user_id: str) -> None:
        self._parts[partition].pop(user_id, None)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions (revoked): they are read again in full if they come back."""
        for p in partitions:
            self._parts.pop(p, None)
            self._generation[p] = self._generation.get(p, 0) + 1

    def generations(self, partitions: Iterable[int]) -> dict[int, int]:
        """Pass to ``install`` what this returned before ``load`` started."""
        return {p: self._generation.get(p, 0) for p in partitions}

    def install(self, loaded: dict[int, dict[str, bytes]], generations: dict[int, int]) -> None:
        """Install what ``load`` read, except partitions dropped since (their read may be stale)."""
        for p, users in loaded.items():
            if p not in self._parts and self._generation.get(p, 0) == generations.get(p):
                self._parts[p] = users

    def load(self, partitions: Collection[int]) -> dict[int, dict[str, bytes]]:
        """Read the changelog partitions in full (blocking).

        Writes a marker with a fresh nonce to each partition, then reads from the
        start until every partition's marker came back: everything written before
        it is in the result. Records after the marker are ignored (only a worker
        that lost the partition could still write there, and the events it was
        working on are delivered again to the new owner).
        """
        from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

        parts = sorted(p for p in set(partitions) if not self.loaded(p))
        if not parts:
            return {}
        started = time.monotonic()
        nonce = uuid.uuid4().hex.encode()
        # not idempotent: a repeated marker is harmless, and a new idempotent producer waits
        # ~0.5 s for its producer id (librdkafka retries the request on a 500 ms timer)
        producer = Producer(client_config(self.settings, "producer", **{"enable.idempotence": False}))
        for p in parts:
            producer.produce(self.topic, key=MARKER_KEY, value=nonce, partition=p)
        if producer.flush(self.timeout_s) != 0:
            raise BrokerUnavailableError(f"cannot write to {self.topic} to recover partitions {parts}")
        consumer = Consumer(client_config(self.settings, "consumer", **{
            "group.id": f"freshrec-state-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False,
            "enable.partition.eof": False}))
        out: dict[int, dict[str, bytes]] = {p: {} for p in parts}
        pending = set(parts)
        records = 0
        next_note = started + 10.0
        try:
            # metadata first: assigned before the partition leaders are known, librdkafka waits a
            # fixed 500 ms before it looks up the start offsets
            consumer.list_topics(self.topic, timeout=self.timeout_s)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            while pending:
                now = time.monotonic()
                if now - started > self.timeout_s:
                    raise BrokerUnavailableError(
                        f"recovering {self.topic} partitions {sorted(pending)} took over {self.timeout_s:.0f}s")
                if now > next_note:
                    log.info("recovering user state: %d records read, partitions %s to go", records,
                             sorted(pending))
                    next_note = now + 10.0
                for msg in consumer.consume(10_000, timeout=0.05):
                    if is_error(msg, self.topic):
                        continue
                    part = msg.partition()
                    if part not in pending:
                        continue
                    key = msg.key()
                    if key == MARKER_KEY:
                        if msg.value() == nonce:
                            pending.discard(part)
                        continue
                    if key is None:
                        continue
                    records += 1
                    user = key.decode("utf-8", "replace")
                    value = msg.value()
                    if value is None:
                        out[part].pop(user, None)
                    else:
                        out[part][user] = value
        finally:
            consumer.close()
        log.info("recovered user state of partitions %s: %d users from %d records in %.2fs", parts,
                 sum(len(u) for u in out.values()), records, time.monotonic() - started)
        return out

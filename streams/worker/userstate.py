"""The workers' per-user state: in memory for the partitions a worker owns, durable in a changelog.

The changelog (``Settings.state_topic``, compacted, as many partitions as the
events topic) holds one record per user: key = user id, value =
``UserHistory.encode()``. A user's state lives in the partition its events
arrive on, so a worker that is assigned events partition p owns changelog
partition p.

Recovery reads a changelog partition from its start up to a marker record the
worker writes itself just before, so it never depends on the broker's end
offsets (the embedded broker under-reports them). The marker's offset is the
new owner's **epoch**: every state record a worker writes carries its epoch in
the ``freshrec-epoch`` header, and recovery keeps, for each user, the record of
the highest epoch (the newest among equal ones). A worker that the group
expelled but that still runs (paused past its session, a zombie) writes with
its old epoch, so its late writes can never roll a user back; where one landed
after the owner's record, recovery writes the owner's record again, so that
compaction keeps the right one.

An erased user's record is first an empty history that keeps the position of
the erase command (so the user's earlier events, read again after a crash
before the commit, are skipped as applied), and becomes a tombstone once the
erase's offset is committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable
from typing import Any

from model_core.state import UserHistory
from streams.errors import BrokerUnavailableError
from streams.kafka import client_config
from streams.reader import MARKER_KEY, TopicReader
from streams.settings import Settings

__all__ = ["EPOCH_HEADER", "MARKER_KEY", "UserStateStore"]

log = logging.getLogger("freshrec.state")

EPOCH_HEADER = "freshrec-epoch"
"""Header of every state record: the writer's epoch (the offset of its recovery marker)."""


def _epoch_of(headers: Any) -> int:
    for name, value in headers or ():
        if name == EPOCH_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return -1
    return -1  # written before epochs existed


class UserStateStore:
    """User id -> encoded ``UserHistory`` for each owned partition, and the owner's epoch of each.

    ``recover`` blocks (the consumer thread calls it from its assignment callback,
    between batches); the rest is in-memory and cheap.
    """

    def __init__(self, settings: Settings, timeout_s: float = 300.0) -> None:
        self.settings = settings
        self.topic = settings.state_topic
        self.timeout_s = timeout_s
        self._parts: dict[int, dict[str, bytes]] = {}
        self._epoch: dict[int, int] = {}
        self._headers: dict[int, list[tuple[str, bytes]]] = {}
        self._parked: dict[int, tuple[dict[str, bytes], int]] = {}
        self.recoveries = 0  # partitions read from the changelog (not kept across a rebalance)

    def loaded(self, partition: int) -> bool:
        return partition in self._parts

    @property
    def partitions(self) -> set[int]:
        return set(self._parts)

    def users(self, partition: int) -> int:
        return len(self._parts.get(partition, ()))

    def epoch(self, partition: int) -> int:
        return self._epoch[partition]

    def headers(self, partition: int) -> list[tuple[str, bytes]]:
        """The headers of a state record this worker writes to ``partition`` (its epoch)."""
        return self._headers[partition]

    def get(self, partition: int, user_id: str) -> UserHistory:
        """A fresh copy of the user's state (a new, empty history for an unknown user)."""
        raw = self._parts[partition].get(user_id)
        return UserHistory(user_id) if raw is None else UserHistory.decode(user_id, raw)

    def put(self, partition: int, user_id: str, value: bytes) -> None:
        self._parts[partition][user_id] = value

    def delete(self, partition: int, user_id: str) -> None:
        self._parts[partition].pop(user_id, None)

    def park(self, partitions: Iterable[int]) -> None:
        """Revoked in an eager rebalance: set aside, and kept only if the very next assignment
        gives them back (then nobody else can have owned them in between)."""
        for p in partitions:
            if p in self._parts:
                self._parked[p] = (self._parts.pop(p), self._epoch.pop(p))
                self._headers.pop(p, None)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions (lost, or revoked for good): they are read in full if they come back."""
        for p in partitions:
            self._parts.pop(p, None)
            self._epoch.pop(p, None)
            self._headers.pop(p, None)
            self._parked.pop(p, None)

    def recover(self, partitions: Collection[int]) -> None:
        """Make every partition loaded: parked ones come back as they were, the rest are read from
        the changelog (blocking). Parked partitions not asked for are dropped."""
        want = set(partitions)
        for p in list(self._parked):
            users, epoch = self._parked.pop(p)
            if p in want and p not in self._parts:
                self._install(p, users, epoch)
        todo = sorted(p for p in want if p not in self._parts)
        if todo:
            for p, (users, epoch) in self.load(todo).items():
                self._install(p, users, epoch)
            self.recoveries += len(todo)

    def _install(self, p: int, users: dict[str, bytes], epoch: int) -> None:
        self._parts[p] = users
        self._epoch[p] = epoch
        self._headers[p] = [(EPOCH_HEADER, str(epoch).encode())]

    def load(self, partitions: Collection[int]) -> dict[int, tuple[dict[str, bytes], int]]:
        """Read changelog partitions in full (blocking): partition -> (user -> value, new epoch).

        Writes a marker with a fresh nonce to each partition (its offset is this owner's new
        epoch), then reads from the start until every partition's marker came back. For each
        user the record of the highest epoch wins; where a lower-epoch record (a zombie's) came
        after it, the winner is written again under the new epoch. Records after the marker are
        ignored: only a worker that lost the partition could still write there.
        """
        from confluent_kafka import Producer

        parts = sorted(set(partitions))
        if not parts:
            return {}
        started = time.monotonic()
        best: dict[int, dict[str, tuple[int, bytes | None]]] = {p: {} for p in parts}
        last: dict[int, dict[str, int]] = {p: {} for p in parts}
        records = 0
        with TopicReader(self.settings, self.topic, partitions=parts, until="marker", timeout_s=self.timeout_s,
                         connect_timeout_s=self.timeout_s, batch=10_000, poll_s=0.05,
                         name="recovering user state") as reader:
            for batch in reader.batches():
                for r in batch:
                    if r.key is None:
                        continue
                    records += 1
                    user = r.key.decode("utf-8", "replace")
                    epoch = _epoch_of(r.headers)
                    last[r.partition][user] = epoch
                    have = best[r.partition].get(user)
                    if have is None or epoch >= have[0]:
                        best[r.partition][user] = (epoch, r.value)
            epochs = dict(reader.markers)
        repairs: list[tuple[int, str, bytes | None]] = []
        out: dict[int, tuple[dict[str, bytes], int]] = {}
        for p in parts:
            # a zombie's write landed after the winner: write the winner again, under the new epoch
            repairs += [(p, user, value) for user, (epoch, value) in best[p].items() if last[p][user] < epoch]
            out[p] = ({u: v for u, (_, v) in best[p].items() if v is not None}, epochs[p])
        if repairs:
            producer = Producer(client_config(self.settings, "producer", **{"enable.idempotence": False}))
            for p, user, value in repairs:
                producer.produce(self.topic, key=user.encode(), value=value, partition=p,
                                 headers=[(EPOCH_HEADER, str(epochs[p]).encode())])
            if producer.flush(self.timeout_s) != 0:
                raise BrokerUnavailableError(f"cannot write to {self.topic} to repair partitions {parts}")
            log.warning("recovery of %s %s: %d users had a stale (zombie) record after their newest one; "
                        "rewrote the newest", self.topic, parts, len(repairs))
        log.info("recovered user state of partitions %s: %d users from %d records in %.2fs (epochs %s)", parts,
                 sum(len(u) for u, _ in out.values()), records, time.monotonic() - started, epochs)
        return out

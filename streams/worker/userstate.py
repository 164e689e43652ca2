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
from collections.abc import Collection, Iterable

from model_core.state import UserHistory
from streams.reader import MARKER_KEY, TopicReader
from streams.settings import Settings

__all__ = ["MARKER_KEY", "UserStateStore"]

log = logging.getLogger("freshrec.state")


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
        parts = sorted(p for p in set(partitions) if not self.loaded(p))
        if not parts:
            return {}
        started = time.monotonic()
        out: dict[int, dict[str, bytes]] = {p: {} for p in parts}
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
                    if r.value is None:
                        out[r.partition].pop(user, None)
                    else:
                        out[r.partition][user] = r.value
        log.info("recovered user state of partitions %s: %d users from %d records in %.2fs", parts,
                 sum(len(u) for u in out.values()), records, time.monotonic() - started)
        return out

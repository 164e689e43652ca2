"""Read the published top-K lists: a small client for services (``freshrec tail`` uses it).

::

    from streams.recommendation_client import RecommendationClient

    with RecommendationClient(settings, users={"u1"}) as client:
        rec = client.wait_for(lambda r: r.user_id == "u1", timeout=10)
        print(rec.item_ids if rec else "no list yet")

Without a ``group`` the client reads every partition of the recommendations topic
itself (manual assignment: no group join, no offsets committed, nothing left behind
on the broker); with a ``group`` it joins that consumer group, so several instances
share the partitions and resume from the group's committed offsets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from types import TracebackType

from streams.codec import Recommendation, decode_recommendation
from streams.errors import BrokerUnavailableError
from streams.kafka import ensure_topics
from streams.reader import Record, TopicReader
from streams.settings import Settings

__all__ = ["RecommendationClient", "format_recommendation"]

log = logging.getLogger(__name__)


class RecommendationClient:
    """Consumes ``settings.recommendations_topic`` and keeps the newest list per user.

    ``from_beginning=False`` starts at the end of the topic (new lists only). On the
    embedded broker, which re-delivers old records when asked for the end, lists
    published before the client was created are also dropped by ``published_at``.
    ``users`` limits what the client returns and keeps to those user ids.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        group: str | None = None,
        from_beginning: bool = True,
        users: Collection[str] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.topic = settings.recommendations_topic
        self.users = frozenset(users) if users else None
        self.latest: dict[str, Recommendation] = {}
        """user_id -> the newest list seen (by ``published_at``)."""
        self.latest_raw: dict[str, bytes] = {}
        """user_id -> the message value of that list, as published."""
        self.erased: set[str] = set()
        """Users whose tombstone (erasure) was read; a later list for the user removes them."""
        self.received = 0
        self.skipped = 0
        self.last_message_at: float | None = None
        self._since = time.time() - 0.5 if not from_beginning and settings.profile == "embedded" else None
        self._closed = True
        ensure_topics(settings, timeout=connect_timeout)  # BrokerUnavailableError if none answers
        self._reader = TopicReader(settings, self.topic, group=group, start="beginning" if from_beginning else "end",
                                   until="follow", connect_timeout_s=connect_timeout, name="tail")
        self._buffer: deque[Record] = deque()
        self._closed = False

    # ------------------------------------------------------------------ reading

    def _poll_raw(self, timeout: float) -> tuple[Recommendation, bytes] | None:
        """The next list (and its raw value) within ``timeout`` seconds, or None."""
        if self._closed:
            raise BrokerUnavailableError("the recommendation client is closed")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            while self._buffer:
                got = self._take(self._buffer.popleft())
                if got is not None:
                    return got
            self._buffer.extend(self._reader.poll(max(0.0, deadline - time.monotonic())))
            if not self._buffer and time.monotonic() >= deadline:
                return None

    def _take(self, msg: Record) -> tuple[Recommendation, bytes] | None:
        """Apply one record to :attr:`latest`; the list if it is one the client returns."""
        self.last_message_at = time.monotonic()
        value = msg.value
        if value is None:  # a tombstone: the user was erased
            user = (msg.key or b"").decode("utf-8", "replace")
            if self.users is None or user in self.users:
                self.latest.pop(user, None)
                self.latest_raw.pop(user, None)
                self.erased.add(user)
            return None
        try:
            rec = decode_recommendation(value)
        except Exception as exc:  # noqa: BLE001 - BadInputError, or any codec slip: skip it
            self.skipped += 1
            self._reader.skip(msg, str(exc))
            log.warning("skipping undecodable message at %s[%d]@%d: %s", self.topic, msg.partition, msg.offset, exc)
            return None
        if (self.users is not None and rec.user_id not in self.users) or (
                self._since is not None and rec.published_at < self._since):
            return None
        self.received += 1
        old = self.latest.get(rec.user_id)
        self.erased.discard(rec.user_id)
        if old is None or rec.published_at >= old.published_at:
            self.latest[rec.user_id] = rec
            self.latest_raw[rec.user_id] = value
        return rec, value

    def poll(self, timeout: float) -> Recommendation | None:
        """The next list within ``timeout`` seconds (undecodable messages are skipped, with
        a warning log), or None. Also updates :attr:`latest`."""
        got = self._poll_raw(timeout)
        return got[0] if got is not None else None

    def __iter__(self) -> Iterator[Recommendation]:
        """Every list as it arrives, forever (until :meth:`close` or an interrupt)."""
        while not self._closed:
            rec = self.poll(1.0)
            if rec is not None:
                yield rec

    def wait_for(self, predicate: Callable[[Recommendation], bool], timeout: float) -> Recommendation | None:
        """The first list satisfying ``predicate``: one already in :attr:`latest`, else the
        next that arrives within ``timeout`` seconds; None if none does."""
        for seen in list(self.latest.values()):
            if predicate(seen):
                return seen
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            rec = self.poll(min(left, 0.5))
            if rec is not None and predicate(rec):
                return rec
        return None

    def drain(self, idle: float = 2.0, stop: threading.Event | None = None) -> dict[str, Recommendation]:
        """Read until no message arrives for ``idle`` seconds; returns :attr:`latest`."""
        last = time.monotonic()
        while (left := last + idle - time.monotonic()) > 0 and not (stop and stop.is_set()):
            if self._poll_raw(min(left, 0.25)) is not None:
                last = time.monotonic()
            elif self.last_message_at is not None and self.last_message_at > last:
                last = self.last_message_at  # skipped (undecodable / other users') messages count too
        return self.latest

    # ------------------------------------------------------------------ life cycle

    def close(self) -> None:
        """Leave the group (if any) and release the consumer; safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._reader.close()

    def __enter__(self) -> RecommendationClient:  # noqa: PYI034
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# ---------------------------------------------------------------------- output


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{max(seconds, 0.0):.2f} s old"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min old"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h old"
    return f"{seconds / 86400:.1f} d old"


def format_recommendation(rec: Recommendation, *, now: float | None = None, max_items: int = 10) -> str:
    """``u1  [model 2026.. idx 17, 42 events, 0.12 s old]  i9 (0.93), i4 (0.91), ...``"""
    now = time.time() if now is None else now
    items = ", ".join(f"{i} ({s:.2f})" for i, s in rec.items[:max_items])
    if len(rec.items) > max_items:
        items += f", ... (+{len(rec.items) - max_items})"
    return (f"{rec.user_id}  [model {rec.model_version} idx {rec.index_version}, "
            f"{rec.events_applied} events, {_age(now - rec.published_at)}]  {items or '(empty)'}")

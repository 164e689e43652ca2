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

``freshrec serve`` reads through the same client with ``keep=False`` (it keeps its own
compact store, fed from :meth:`poll_raw` and ``on_tombstone``), ``extra`` topics (catalog,
trending, dead letters, events) handed raw to their handlers, and ``track_end=True``
(:attr:`caught_up`, :meth:`lag`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from types import TracebackType
from typing import Any, Literal

from streams.codec import Recommendation, decode_recommendation
from streams.errors import BrokerUnavailableError, ConfigError
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
    ``partitions`` (no group only) reads just those partitions of the topic.
    ``keep=False`` leaves :attr:`latest` empty (the caller keeps what it needs).
    ``extra`` maps other topics to ``(start, handler)``: every partition is read from
    ``"beginning"`` or ``"end"`` and each record (a ``streams.reader.Record``, tombstones
    too) goes to ``handler(record)``.
    ``on_tombstone(user_id)`` is called for each tombstone (erased user).
    ``track_end=True`` asks for end-of-partition events: :attr:`caught_up` says whether
    every partition read from the beginning has reached its end. ``fetch_wait_ms`` sets
    every reader's ``fetch.wait.max.ms`` (default: the profile's).

    Every topic is read through a ``streams.reader.TopicReader`` (following, from where asked).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        group: str | None = None,
        from_beginning: bool = True,
        users: Collection[str] | None = None,
        connect_timeout: float = 10.0,
        partitions: Collection[int] | None = None,
        keep: bool = True,
        extra: Mapping[str, tuple[Literal["beginning", "end"], Callable[[Record], None]]] | None = None,
        on_tombstone: Callable[[str], None] | None = None,
        track_end: bool = False,
        fetch_wait_ms: int | None = None,
    ) -> None:
        if group is not None and (partitions is not None or extra):
            raise ConfigError("partitions and extra topics need group=None (manual assignment)")
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
        self._keep = keep
        self._on_tombstone = on_tombstone
        self._pending: deque[Record] = deque()
        self._closed = False
        self._extra: list[tuple[TopicReader, Callable[[Record], None], bool]] = []
        ensure_topics(settings, timeout=connect_timeout)  # BrokerUnavailableError if none answers

        def reader(topic: str, start: Literal["beginning", "end"], **kw: Any) -> TopicReader:
            return TopicReader(settings, topic, start=start, until="follow", connect_timeout_s=connect_timeout,
                               poll_s=0.0, name="recommendation-client", eof=track_end and start == "beginning",
                               fetch_wait_ms=fetch_wait_ms, **kw)

        self._main = reader(self.topic, "beginning" if from_beginning else "end", partitions=partitions,
                            group=group)
        try:
            for topic, (where, handler) in (extra or {}).items():
                self._extra.append((reader(topic, where), handler, track_end and where == "beginning"))
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ reading

    def _poll_raw(self, timeout: float) -> tuple[Recommendation, bytes] | None:
        """The next list (and its raw value) within ``timeout`` seconds, or None."""
        if self._closed:
            raise BrokerUnavailableError("the recommendation client is closed")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            for side, handler, _ in self._extra:  # the other topics: whatever has arrived, now
                for r in side.poll(0.0):
                    self.last_message_at = time.monotonic()
                    handler(r)
            if not self._pending:
                got = self._main.poll(max(0.0, deadline - time.monotonic()))
                if got:
                    self.last_message_at = time.monotonic()
                    self._pending.extend(got)
            while self._pending:
                found = self._take(self._pending.popleft())
                if found is not None:
                    return found
            if time.monotonic() >= deadline:
                return None

    def _take(self, r: Record) -> tuple[Recommendation, bytes] | None:
        """A record of the recommendations topic: a list to return, or None (a tombstone, a list
        of another user, an undecodable message)."""
        if r.value is None:  # a tombstone: the user was erased
            user = (r.key or b"").decode("utf-8", "replace")
            if self.users is None or user in self.users:
                self.latest.pop(user, None)
                self.latest_raw.pop(user, None)
                self.erased.add(user)
                if self._on_tombstone is not None:
                    self._on_tombstone(user)
            return None
        try:
            rec = decode_recommendation(r.value)
        except Exception as exc:  # noqa: BLE001 - BadInputError, or any codec slip: skip it
            self.skipped += 1
            log.warning("skipping undecodable message at %s[%d]@%d: %s", self.topic, r.partition, r.offset, exc)
            return None
        if (self.users is not None and rec.user_id not in self.users) or (
                self._since is not None and rec.published_at < self._since):
            return None
        self.received += 1
        if self._keep:
            old = self.latest.get(rec.user_id)
            self.erased.discard(rec.user_id)
            if old is None or rec.published_at >= old.published_at:
                self.latest[rec.user_id] = rec
                self.latest_raw[rec.user_id] = r.value
        return rec, r.value

    def poll_raw(self, timeout: float) -> tuple[Recommendation, bytes] | None:
        """The next list and its message value as published, within ``timeout`` seconds, or None."""
        return self._poll_raw(timeout)

    @property
    def caught_up(self) -> bool:
        """Every partition read from the beginning has reported its end since its last record
        (``track_end=True``). On the embedded broker, which under-reports end offsets, an end
        can come early: callers also wait for a quiet spell (see ``freshrec serve``)."""
        readers = [self._main] + [side for side, _, tracked in self._extra if tracked]
        return self._main.eof and all(r.caught_up for r in readers)

    def lag(self) -> int | None:
        """Records of the recommendations topic not read yet (high watermarks of the last fetch
        responses minus this client's positions; reads low on the embedded broker); None before
        the first fetch. Call it on the thread that polls."""
        return self._main.lag()

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
        """Leave the group (if any) and release the readers; safe to call more than once."""
        if not self._closed:
            self._closed = True
            for r in [getattr(self, "_main", None)] + [side for side, _, _ in self._extra]:
                if r is not None:
                    r.close()

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

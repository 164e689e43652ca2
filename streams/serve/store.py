"""What ``freshrec serve`` holds: the newest list per user, the catalog, the trending list.

:class:`Store` is written by one thread (:class:`StoreReader`, the Kafka side) and read by
the HTTP event loop. Reads take no lock: a user's :class:`Entry` is built whole and then
put in the dict in one step (atomic under the GIL), and it is never changed afterwards.
The few aggregates the dashboard reads (counts by model version, the per-second series)
are guarded by a lock that the hot GET path never takes.

Memory: an entry keeps item ids interned (one string per item of the catalog, shared by
every list) and scores in an ``array('d')`` (docs/operations.md has the measured RSS per
100k users).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from streams.codec import Recommendation
from streams.heap import freeze_long_lived
from streams.recommendation_client import RecommendationClient
from streams.settings import Settings

__all__ = ["Entry", "Selected", "Store", "StoreReader", "Trending"]

log = logging.getLogger("freshrec.serve")

SERIES_SECONDS = 600
"""The dashboard's per-second series reach back this far (10 minutes)."""
FRESH_SAMPLES_PER_S = 256
"""At most this many freshness samples kept per second (the first ones of that second)."""
EMBEDDED_READ_WAIT_MS = 100
"""Fetch wait of serve's readers on the embedded broker (the worker's stay at 20 ms): each fetch
there walks every batch stored in the partition, and serve follows five topics, the events
topic among them; at 20 ms its fetches took broker CPU from the worker's path (docs/broker.md)."""


class Entry(NamedTuple):
    """One user's newest list, compact and immutable.

    :class:`Store` keeps it as a plain ``tuple(entry)`` of atoms (strings, numbers, tuples of
    strings, bytes) and :meth:`Store.get` wraps it again: the garbage collector stops
    tracking a plain tuple of atoms once a collection or two has seen it (a NamedTuple it tracks
    for ever), so
    a million held lists add nothing to the full collections that would otherwise pause
    requests (tens of ms per 100k tracked objects).
    """

    item_ids: tuple[str, ...]
    scores_f64: bytes
    """The scores as float64 bytes (bytes, unlike an array, are not tracked by the collector)."""
    sources: tuple[tuple[str, ...] | None, ...] | None
    model_version: str
    index_version: int
    events_applied: int
    last_event_id: str | None
    last_event_time: float | None
    published_at: float
    last_event_at: float | None
    received_at: float

    @classmethod
    def of(cls, rec: Recommendation, received_at: float) -> Entry:
        intern = sys.intern
        sources = None
        if rec.sources is not None:
            sources = tuple(None if v is None else tuple(intern(x) for x in v) for v in rec.sources)
        return cls(tuple(intern(i) for i, _ in rec.items), array("d", (s for _, s in rec.items)).tobytes(), sources,
                   intern(rec.model_version), rec.index_version, rec.events_applied, rec.last_event_id,
                   rec.last_event_time, rec.published_at, rec.last_event_at, received_at)

    @property
    def scores(self) -> Sequence[float]:
        """The scores, as a float view of :attr:`scores_f64` (no copy)."""
        return memoryview(self.scores_f64).cast("d")  # type: ignore[return-value]

    @property
    def freshness_s(self) -> float | None:
        """Broker time of the newest event the list reflects -> the list held here, seconds."""
        return None if self.last_event_at is None else max(0.0, self.received_at - self.last_event_at)


@dataclass(frozen=True)
class Trending:
    """The global trending list (``<prefix>.trending``, key ``global``)."""

    item_ids: tuple[str, ...]
    scores: tuple[float, ...]
    model_version: str
    published_at: float
    received_at: float


@dataclass(frozen=True)
class Selected:
    """A list cut to ``k`` after the filters: ``(item_id, score, sources)`` per item."""

    items: list[tuple[str, float, tuple[str, ...] | None]]
    filtered: int
    """Items of the stored list the filters removed (before the cut to k)."""


def decode_trending(value: bytes) -> Trending:
    """``{"items": [{"item_id", "score"}], "model_version", "published_at"}``; ValueError etc. if not."""
    d = orjson.loads(value)
    items = [(sys.intern(str(x["item_id"])), float(x["score"])) for x in d["items"]]
    return Trending(tuple(i for i, _ in items), tuple(s for _, s in items), str(d["model_version"]),
                    float(d["published_at"]), time.time())


class Store:
    """Users' newest lists, erased users, item availability and categories, the trending list,
    and the counters the dashboard and /metrics show."""

    def __init__(self, recent_events: int = 0) -> None:
        self.lists: dict[str, tuple[Any, ...]] = {}
        """user_id -> ``tuple(Entry)`` (see :class:`Entry` for why not the Entry itself)."""
        self.erased: set[str] = set()
        self.unavailable: set[str] = set()
        self.category: dict[str, str] = {}
        self.trending: Trending | None = None
        self.recent_events: deque[tuple[bytes, float, bytes]] = deque(maxlen=max(1, recent_events))
        self.reads_events = recent_events > 0
        self.received = 0
        self.tombstones = 0
        self.skipped = 0
        """Catalog and trending messages skipped as undecodable."""
        self.lists_skipped = 0
        """Recommendation messages skipped as undecodable."""
        self.catalog_updates = 0
        self.dlq_messages = 0
        self.lag: int | None = None
        self.ready_at: float | None = None
        self.started = time.time()
        self._by_model: dict[str, int] = {}
        self._series: deque[list[Any]] = deque(maxlen=SERIES_SECONDS)
        """Per second: [unix second, lists received, freshness samples in seconds]."""
        self._lock = threading.Lock()

    def get(self, user_id: str) -> Entry | None:
        """The user's newest list, or None."""
        t = self.lists.get(user_id)
        return None if t is None else Entry._make(t)

    # ------------------------------------------------------------------ writes (reader thread)

    def put(self, rec: Recommendation, received_at: float | None = None) -> bool:
        """Keep ``rec`` if it is the user's newest list (by ``published_at``); True if kept."""
        now = time.time() if received_at is None else received_at
        self.received += 1
        old = self.get(rec.user_id)
        if old is not None and rec.published_at < old.published_at:
            return False
        entry = Entry.of(rec, now)
        with self._lock:
            if old is not None:
                self._count(old.model_version, -1)
            self._count(entry.model_version, +1)
            self._note(now, entry.freshness_s)
        self.lists[rec.user_id] = tuple(entry)
        self.erased.discard(rec.user_id)
        return True

    def erase(self, user_id: str) -> None:
        """A tombstone: the user was erased; their list goes."""
        self.tombstones += 1
        old = self.lists.pop(user_id, None)
        self.erased.add(user_id)
        if old is not None:
            with self._lock:
                self._count(Entry._make(old).model_version, -1)

    def apply_catalog(self, value: bytes | None) -> None:
        """One catalog message: ``{"item_id", "event": "new|unavailable|available", "category"?}``."""
        try:
            d = orjson.loads(value or b"")
            item, event = str(d["item_id"]), d["event"]
            if event not in ("new", "unavailable", "available"):
                raise ValueError(f"unknown event {event!r}")
        except Exception as exc:  # noqa: BLE001 - a bad catalog message is skipped, never fatal
            self.skipped += 1
            log.warning("skipping catalog message %r: %s", (value or b"")[:120], exc)
            return
        self.catalog_updates += 1
        item = sys.intern(item)
        if event == "unavailable":
            self.unavailable.add(item)
        else:
            self.unavailable.discard(item)
        if isinstance(d.get("category"), str):
            self.category[item] = sys.intern(d["category"])

    def set_trending(self, value: bytes | None) -> None:
        if value is None:
            self.trending = None
            return
        try:
            trending = decode_trending(value)
        except Exception as exc:  # noqa: BLE001 - a bad trending message is skipped
            self.skipped += 1
            log.warning("skipping trending message %r: %s", value[:120], exc)
            return
        if self.trending is None or trending.published_at >= self.trending.published_at:
            self.trending = trending

    def note_event(self, key: bytes | None, timestamp: float, value: bytes | None) -> None:
        if key is not None and value is not None:
            self.recent_events.append((key, timestamp, value))

    def _count(self, model_version: str, delta: int) -> None:
        n = self._by_model.get(model_version, 0) + delta
        if n > 0:
            self._by_model[model_version] = n
        else:
            self._by_model.pop(model_version, None)

    def _note(self, now: float, freshness: float | None) -> None:
        second = int(now)
        if not self._series or self._series[-1][0] != second:
            self._series.append([second, 0, []])
        slot = self._series[-1]
        slot[1] += 1
        if freshness is not None and len(slot[2]) < FRESH_SAMPLES_PER_S:
            slot[2].append(freshness)

    # ------------------------------------------------------------------ reads (event loop)

    def select(self, item_ids: Sequence[str], scores: Sequence[float] | memoryview,
               sources: Sequence[tuple[str, ...] | None] | None, k: int | None, exclude: Iterable[str] = (),
               category: str | None = None, available_only: bool = True) -> Selected:
        """The items that pass the filters, in list order, cut to ``k`` (None = all)."""
        excluded = set(exclude)
        unavailable, categories = self.unavailable, self.category
        out: list[tuple[str, float, tuple[str, ...] | None]] = []
        filtered = 0
        for n, item in enumerate(item_ids):
            if (item in excluded or (available_only and item in unavailable)
                    or (category is not None and categories.get(item) != category)):
                filtered += 1
                continue
            if k is None or len(out) < k:
                out.append((item, scores[n], sources[n] if sources is not None else None))
        return Selected(out, filtered)

    def by_model(self) -> dict[str, int]:
        """Lists held per model version."""
        with self._lock:
            return dict(self._by_model)

    def series(self, seconds: int = 300, step: int = 10) -> list[dict[str, Any]]:
        """Per ``step`` seconds over the last ``seconds``: lists/s and freshness p50/p99 (ms)."""
        now = int(time.time())
        with self._lock:
            slots = [(s[0], s[1], list(s[2])) for s in self._series if s[0] > now - seconds]
        out = []
        for start in range(now - seconds + 1, now + 1, step):
            lists, fresh = 0, []
            for second, n, samples in slots:
                if start <= second < start + step:
                    lists += n
                    fresh += samples
            fresh.sort()
            out.append({"t": start, "lists_per_s": lists / step,
                        "freshness_p50_ms": _pct(fresh, 50), "freshness_p99_ms": _pct(fresh, 99)})
        return out

    def lists_per_s(self, seconds: int = 10) -> float:
        """Lists received per second over the last complete ``seconds``."""
        now = int(time.time())
        with self._lock:
            n = sum(s[1] for s in self._series if now - seconds <= s[0] < now)
        return n / seconds

    def events_of(self, user_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The user's newest events among the recent ones kept, newest first (at most ``limit``)."""
        key = user_id.encode()
        out: list[dict[str, Any]] = []
        for k, ts, value in reversed(list(self.recent_events)):
            if k == key:
                try:
                    d = orjson.loads(value)
                except orjson.JSONDecodeError:
                    d = {"undecodable": value[:200].decode(errors="replace")}
                out.append({"broker_time": ts, "event": d})
                if len(out) >= limit:
                    break
        return out


def _pct(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000.0, 1)


class StoreReader(threading.Thread):
    """Reads the recommendations topic (the configured partitions, no consumer group), the catalog,
    trending and dead-letter topics from the start, and the events topic from its end, into a
    :class:`Store`. Ready once every partition read from the start reported its end and no record
    came for ``settings.serve_ready_quiet_s``."""

    def __init__(self, settings: Settings, store: Store, connect_timeout: float = 10.0) -> None:
        super().__init__(name="freshrec-serve-reader", daemon=True)
        self.settings, self.store = settings, store
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        s = settings
        extra: dict[str, Any] = {
            s.items_topic: ("beginning", lambda r: store.apply_catalog(r.value)),
            s.trending_topic: ("beginning", lambda r: store.set_trending(r.value)),
            s.dlq_topic: ("beginning", self._dead_letter),
        }
        if store.reads_events:
            extra[s.events_topic] = ("end", lambda r: store.note_event(r.key, r.timestamp or time.time(), r.value))
        # BrokerUnavailableError / ConfigError here, in the caller's thread
        self.client = RecommendationClient(s, keep=False, partitions=s.serve_partition_ids, extra=extra,
                                           on_tombstone=store.erase, track_end=True,
                                           connect_timeout=connect_timeout,
                                           fetch_wait_ms=EMBEDDED_READ_WAIT_MS if s.profile == "embedded" else None)

    def _dead_letter(self, msg: Any) -> None:
        self.store.dlq_messages += 1

    def run(self) -> None:
        store, client = self.store, self.client
        quiet = self.settings.serve_ready_quiet_s
        next_lag = 0.0
        try:
            while not self.stopping.is_set():
                got = client.poll_raw(0.1)
                if got is not None:
                    store.put(got[0])
                now = time.monotonic()
                if store.ready_at is None and client.caught_up and (
                        client.last_message_at is None or now - client.last_message_at >= quiet):
                    store.ready_at = time.time()
                    freeze_long_lived("reading the topics")  # what was read at start
                    log.info("serve ready: %d lists held (%d read), %d erased, %d unavailable items",
                             len(store.lists), store.received, len(store.erased), len(store.unavailable))
                if now >= next_lag:
                    next_lag = now + 1.0
                    store.lag = client.lag()
                    store.lists_skipped = client.skipped
        except BaseException as exc:  # noqa: BLE001 - /health reports it; the process keeps answering
            self.error = exc
            log.error("serve reader stopped: %s", exc)
        finally:
            client.close()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout)

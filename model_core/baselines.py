"""Baselines: trending, popular, item co-visitation, sequential rules, session kNN.

Each is a :class:`~model_core.reco.BaseRecommender`: it learns online from batches
of events (``learn``) and answers ``recommend(users, k, exclude)`` with plain item
ids. ``SequentialRules`` and ``SessionKNN`` are the session-based anchors of
Ludewig & Jannach ("Evaluation of session-based recommendation algorithms", 2018)
— SR and V-SKNN — written here for an online stream: the model learns each event
as it arrives, and a user's current session is cut by a session id change or an
idle gap. Lists too short are topped up with trending items.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Collection, Iterable, Sequence

import numpy as np

from model_core.config import EventWeights
from model_core.events import Event
from model_core.reco import BaseRecommender, Ranked

__all__ = ["CoVisitation", "Popular", "SequentialRules", "SessionKNN", "Trending"]

_RESCALE_EXP = 60.0  # rescale at 2**60
_MIN_EXP = -1000.0


class _ItemScores:
    """Growable item-id -> float score array with top-k selection."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.ids: list[str] = []
        self.scores = np.zeros(1024, dtype=np.float64)

    def row(self, item_id: str) -> int:
        r = self.rows.get(item_id)
        if r is None:
            r = self.rows[item_id] = len(self.ids)
            self.ids.append(item_id)
            if r >= len(self.scores):
                self.scores = np.concatenate([self.scores, np.zeros_like(self.scores)])
        return r

    def top(self, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        n = len(self.ids)
        want = min(n, k + len(exclude))
        if want <= 0:
            return []
        s = self.scores[:n]
        cand = np.argpartition(-s, want - 1)[:want] if want < n else np.arange(n)
        cand = cand[np.argsort(-s[cand], kind="stable")]
        out: list[tuple[str, float]] = []
        for r in cand:
            item = self.ids[r]
            if item not in exclude and s[r] > 0:
                out.append((item, float(s[r])))
                if len(out) == k:
                    break
        return out


def _excludes(users: Sequence[str], exclude: Sequence[Collection[str]] | None) -> Sequence[Collection[str]]:
    return exclude if exclude is not None else [()] * len(users)


class Trending(BaseRecommender):
    """Event-time-decayed popularity, updated online.

    An event of weight w at time t adds ``w * 0.5 ** ((T - t) / half_life_s)`` to
    its item's score at reference time T; scores are kept scaled to an anchor
    time so an update is O(1).
    """

    def __init__(self, half_life_s: float = 86400.0, weights: EventWeights | None = None) -> None:
        self.half_life_s = half_life_s
        self.weights = weights or EventWeights()
        self._s = _ItemScores()
        self._anchor: float | None = None

    def learn(self, events: Iterable[Event]) -> None:  # type: ignore[override]
        for ev in events:
            if self._anchor is None:
                self._anchor = ev.time
            e = (ev.time - self._anchor) / self.half_life_s
            if e > _RESCALE_EXP:  # move the anchor forward, rescale everything (maybe to 0)
                self._s.scores *= 2.0 ** max(-e, _MIN_EXP)
                self._anchor = ev.time
                e = 0.0
            scale = 2.0 ** max(e, _MIN_EXP)  # clamped: finite for events far out of order
            row = self._s.row(ev.item_id)  # may grow the array: index after
            self._s.scores[row] += self.weights.of(ev) * scale

    def top(self, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """The k most trending items not in ``exclude``, best first."""
        return self._s.top(k, exclude)

    def recommend(
        self, users: Sequence[str], k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[Ranked]:
        return [self.top(k, ex) for ex in _excludes(users, exclude)]


class Popular(BaseRecommender):
    """Static popularity: summed event weights over the training events (``fit``); ``learn`` ignores."""

    def __init__(self, weights: EventWeights | None = None) -> None:
        self.weights = weights or EventWeights()
        self._s = _ItemScores()

    def fit(self, events: Iterable[Event]) -> None:  # type: ignore[override]
        for ev in events:
            row = self._s.row(ev.item_id)
            self._s.scores[row] += self.weights.of(ev)

    def learn(self, events: Sequence[Event]) -> None:
        pass

    def top(self, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        return self._s.top(k, exclude)

    def recommend(
        self, users: Sequence[str], k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[Ranked]:
        return [self.top(k, ex) for ex in _excludes(users, exclude)]


class CoVisitation(BaseRecommender):
    """Item-to-item co-visitation counts within each user's last ``window`` items, online."""

    def __init__(self, window: int = 5, weights: EventWeights | None = None) -> None:
        self.window = window
        self.weights = weights or EventWeights()
        self._pairs: dict[str, dict[str, float]] = {}
        self._recent: dict[str, deque[str]] = {}
        self.fallback = Trending(weights=self.weights)

    def learn(self, events: Iterable[Event]) -> None:  # type: ignore[override]
        for ev in events:
            self.fallback.learn((ev,))
            recent = self._recent.setdefault(ev.user_id, deque(maxlen=self.window))
            w = self.weights.of(ev)
            for other in recent:
                if other != ev.item_id:
                    a = self._pairs.setdefault(ev.item_id, {})
                    a[other] = a.get(other, 0.0) + w
                    b = self._pairs.setdefault(other, {})
                    b[ev.item_id] = b.get(ev.item_id, 0.0) + w
            if ev.item_id in recent:
                recent.remove(ev.item_id)
            recent.append(ev.item_id)

    def recommend(
        self, users: Sequence[str], k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[Ranked]:
        return [self._one(u, k, ex) for u, ex in zip(users, _excludes(users, exclude))]

    def _one(self, user_id: str, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        scores: dict[str, float] = {}
        factor = 1.0
        for item in reversed(self._recent.get(user_id, ())):
            for other, c in self._pairs.get(item, {}).items():
                scores[other] = scores.get(other, 0.0) + factor * c
            factor *= 0.5
        ranked = sorted(((s, i) for i, s in scores.items() if i not in exclude), reverse=True)
        out = [(i, s) for s, i in ranked[:k]]
        if len(out) < k:
            have = set(exclude).union(i for i, _ in out)
            out += self.fallback.top(k - len(out), have)
        return out



def _ranked(scores: dict[str, float], k: int, exclude: Collection[str], fallback: Trending) -> Ranked:
    """Top k of ``scores`` outside ``exclude``, topped up with trending items."""
    best = heapq.nlargest(k + len(exclude), scores.items(), key=lambda kv: kv[1])
    out = [(i, s) for i, s in best if i not in exclude][:k]
    if len(out) < k:
        have = set(exclude).union(i for i, _ in out)
        out += fallback.top(k - len(out), have)
    return out


class _Sessions:
    """Each user's current session, online: cut by a new ``session_id`` or an idle gap."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s
        self.current: dict[str, tuple[int, str | None, float]] = {}  # user -> (sid, session_id, last time)
        self._next = 0

    def session_of(self, ev: Event) -> tuple[int, bool]:
        """(internal session id, True when the event starts a new session)."""
        cur = self.current.get(ev.user_id)
        new = (
            cur is None
            or (ev.session_id is not None and ev.session_id != cur[1])
            or abs(ev.time - cur[2]) > self.gap_s
        )
        if cur is None or new:
            sid = self._next
            self._next += 1
        else:
            sid = cur[0]
        last = ev.time if cur is None or new else max(cur[2], ev.time)
        self.current[ev.user_id] = (sid, ev.session_id, last)
        return sid, new


class SequentialRules(BaseRecommender):
    """SR: directional rules "a then b", weighted by 1/gap, scored from the session's last item.

    Within a session, when item b follows item a at ``gap`` steps (1 <= gap <=
    ``steps``), rule a -> b gains ``w(b) / gap``. A list ranks the rules of the
    session's last item. Each item keeps at most ``max_rules`` rules: when it has
    more, the weakest half is dropped (the pruning of the original, online).
    """

    def __init__(self, steps: int = 10, session_gap_s: float = 1800.0, max_rules: int = 1000,
                 weights: EventWeights | None = None) -> None:
        self.steps = steps
        self.max_rules = max_rules
        self.weights = weights or EventWeights()
        self.rules: dict[str, dict[str, float]] = {}
        self._sessions = _Sessions(session_gap_s)
        self._recent: dict[str, deque[str]] = {}
        self.fallback = Trending(weights=self.weights)

    def learn(self, events: Sequence[Event]) -> None:
        self.fallback.learn(events)
        for ev in events:
            _, new = self._sessions.session_of(ev)
            recent = self._recent.get(ev.user_id)
            if recent is None or new:
                recent = self._recent[ev.user_id] = deque(maxlen=self.steps)
            w = self.weights.of(ev)
            for gap, prev in enumerate(reversed(recent), 1):
                if prev != ev.item_id:
                    r = self.rules.setdefault(prev, {})
                    r[ev.item_id] = r.get(ev.item_id, 0.0) + w / gap
                    if len(r) > self.max_rules:
                        _prune(r)
            recent.append(ev.item_id)

    def recommend(
        self, users: Sequence[str], k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[Ranked]:
        out = []
        for u, ex in zip(users, _excludes(users, exclude)):
            recent = self._recent.get(u)
            scores = self.rules.get(recent[-1], {}) if recent else {}
            out.append(_ranked(scores, k, ex, self.fallback))
        return out


def _prune(scores: dict[str, float]) -> None:
    """Drop the weaker half of a rule table (keeps memory bounded on an endless stream)."""
    keep = heapq.nlargest(len(scores) // 2, scores.items(), key=lambda kv: kv[1])
    scores.clear()
    scores.update(keep)


class SessionKNN(BaseRecommender):
    """V-SKNN: vector-multiplied session kNN over the most recent sessions.

    The current session is a vector with weight ``1 / (1 + distance from its last
    item)``; a past session is binary. Candidates are the ``sample_size`` most
    recently active past sessions that share an item with the current one; their
    similarity is the dot product, and the ``neighbours`` most similar ones vote
    for their items with ``similarity / distance`` to the item they share with the
    current session's most recent match ("div" item scoring).
    """

    def __init__(self, neighbours: int = 100, sample_size: int = 500, session_gap_s: float = 1800.0,
                 max_session_len: int = 50, weights: EventWeights | None = None) -> None:
        self.neighbours = neighbours
        self.sample_size = sample_size
        self.max_session_len = max_session_len
        self.weights = weights or EventWeights()
        self._sessions = _Sessions(session_gap_s)
        self.items_of: dict[int, list[str]] = {}  # session -> items in order (distinct, newest last)
        self.last_time: dict[int, float] = {}
        self.sessions_of: dict[str, dict[int, None]] = {}  # item -> sessions, least recent first
        self.fallback = Trending(weights=self.weights)

    def learn(self, events: Sequence[Event]) -> None:
        self.fallback.learn(events)
        for ev in events:
            sid, _ = self._sessions.session_of(ev)
            items = self.items_of.setdefault(sid, [])
            if ev.item_id in items:
                items.remove(ev.item_id)
            items.append(ev.item_id)
            if len(items) > self.max_session_len:
                del items[0]
            self.last_time[sid] = max(self.last_time.get(sid, ev.time), ev.time)
            holders = self.sessions_of.setdefault(ev.item_id, {})
            holders.pop(sid, None)
            holders[sid] = None
            if len(holders) > self.sample_size:
                del holders[next(iter(holders))]

    def _scores(self, user: str) -> dict[str, float]:
        cur = self._sessions.current.get(user)
        if cur is None:
            return {}
        sid = cur[0]
        items = self.items_of.get(sid, [])
        n = len(items)
        weight = {item: 1.0 / (n - p) for p, item in enumerate(items)}
        pool: set[int] = set()
        for item in items:
            pool.update(self.sessions_of.get(item, ()))
        pool.discard(sid)
        if len(pool) > self.sample_size:
            lt = self.last_time
            pool = set(heapq.nlargest(self.sample_size, pool, key=lambda s: lt[s]))
        sims = []
        for s in pool:
            other = self.items_of[s]
            sim = sum(weight.get(i, 0.0) for i in other)
            if sim > 0:
                sims.append((sim, s))
        scores: dict[str, float] = {}
        for sim, s in heapq.nlargest(self.neighbours, sims):
            other = self.items_of[s]
            match = max((p for p, i in enumerate(other) if i in weight), key=lambda p: weight[other[p]])
            for p, i in enumerate(other):
                if p != match:
                    scores[i] = scores.get(i, 0.0) + sim / abs(p - match)
        return scores

    def recommend(
        self, users: Sequence[str], k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[Ranked]:
        return [_ranked(self._scores(u), k, ex, self.fallback) for u, ex in zip(users, _excludes(users, exclude))]

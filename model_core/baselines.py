"""Cold start and baselines: trending, popular, item co-visitation.

All learn online from events (``learn``) and answer ``top`` / ``recommend`` with
plain item ids. Trending is also the cold-start fallback of the served model.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Iterable

import numpy as np

from model_core.config import EventWeights
from model_core.events import Event

__all__ = ["Trending", "Popular", "CoVisitation"]

_RESCALE_AT = 60.0  # half-lives ahead of the anchor before rescaling (2**60)


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


class Trending:
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

    def learn(self, events: Iterable[Event]) -> None:
        for ev in events:
            if self._anchor is None:
                self._anchor = ev.time
            exponent = (ev.time - self._anchor) / self.half_life_s
            if exponent > _RESCALE_AT:  # move the anchor forward, rescale everything
                self._s.scores *= math.pow(2.0, -min(exponent, 2000.0))  # far ahead: old scores vanish
                self._anchor = ev.time
                exponent = 0.0
            scale = math.pow(2.0, max(exponent, -2000.0))  # far in the past: ~0, never an error
            row = self._s.row(ev.item_id)  # may grow the array: index after
            self._s.scores[row] += self.weights.of(ev) * scale

    def top(self, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """The k most trending items not in ``exclude``, best first."""
        return self._s.top(k, exclude)


class Popular:
    """Static popularity: summed event weights over the training events."""

    def __init__(self, weights: EventWeights | None = None) -> None:
        self.weights = weights or EventWeights()
        self._s = _ItemScores()

    def fit(self, events: Iterable[Event]) -> None:
        for ev in events:
            row = self._s.row(ev.item_id)
            self._s.scores[row] += self.weights.of(ev)

    def top(self, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        return self._s.top(k, exclude)


class CoVisitation:
    """Item-to-item co-visitation counts within each user's last ``window`` items, online."""

    def __init__(self, window: int = 5, weights: EventWeights | None = None) -> None:
        self.window = window
        self.weights = weights or EventWeights()
        self._pairs: dict[str, dict[str, float]] = {}
        self._recent: dict[str, deque[str]] = {}
        self.fallback = Trending(weights=self.weights)

    def learn(self, events: Iterable[Event]) -> None:
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

    def recommend(self, user_id: str, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
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


"""A realistic, learnable synthetic e-commerce event log.

Used for demos, tests and benchmarks. The log has the structure a recommender
should be able to learn:

* **Latent taste clusters.** Every item belongs to one cluster; clusters differ
  in size and in popularity, and item popularity inside a cluster follows a
  power law (``popularity_exponent``). Every user has a taste mix over 1-3
  clusters with one dominant cluster, so collaborative filtering beats
  popularity.
* **Sessions.** A session is a burst of views seconds-to-minutes apart; a
  user's sessions are hours or days apart (users' activity is heavy-tailed,
  lognormal). A session mostly stays in one cluster (drawn from the user's
  current taste) and walks through a few *anchor* items: it re-views them and
  views items next to them in popularity rank, so recent events predict the
  next ones.
* **Funnel.** view -> add_to_cart -> purchase: about ``conversion_rate`` of
  views end in a purchase, and every purchase follows an add_to_cart of the
  same item by the same user in the same session. Carts and purchases carry
  ``quantity=1`` and the item's stable price.
* **Interest drift.** At the start of a session a user's dominant cluster moves
  to another (popularity-weighted) cluster with probability ``drift_rate``, so
  recent behaviour predicts better than old behaviour.
* **New items.** ``new_item_fraction`` of the items launch inside the log period,
  never appear before their launch time, and get a popularity boost that decays
  over the first days after launch.
* **Daily cycle.** Activity peaks in the (UTC) evening.

Events come out in non-decreasing time order with ``event_id`` ``"e0", "e1",
...`` in that order, ``session_id`` ``"s<n>"``, ``user_id`` ``"u<n>"`` and
``item_id`` ``"i<n>"``. The number of events is exactly ``config.events``.
The same config (seed included) gives the same log, byte for byte.

Scale: simulated time is cut into windows of about 32k events; the sessions
that start in a window are generated with vectorised numpy, the window's
events are sorted, and those that spill past the window's end (a session
running across the boundary) are carried into the next window. Memory is
O(users + items + events per window); the log is never held in memory.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_core.errors import ConfigError
from model_core.events import Event, EventType, event_to_json

__all__ = ["SynthCatalog", "SynthConfig", "generate_events", "make_catalog", "write_log"]

# --- generator constants (behaviour knobs that are not worth a config field) ---
_WINDOW_EVENTS = 32_768  # target events per generation window
_BIN_SECONDS = 3600.0  # resolution of the daily activity cycle
_DAILY_AMPLITUDE = 0.6  # intensity = 1 + A cos(2 pi (hour - peak) / 24)
_DAILY_PEAK_HOUR = 20.0
_USER_ACTIVITY_SIGMA = 1.3  # lognormal sigma of users' session rates (heavy tail)
_EXPLORE = 0.03  # chance a session's cluster is a random (popularity-weighted) one
_ANCHOR_IN_SESSION_CLUSTER = 0.9  # chance an anchor is from the session's cluster
_VIEWS_PER_ANCHOR = 4  # one anchor item per this many views
_REPEAT_ANCHOR = 0.3  # chance a non-first view re-views its anchor (else a rank neighbour)
_CART_TO_PURCHASE = 0.4  # chance an add_to_cart becomes a purchase (if conversion_rate allows)
_BOOST_CHANCE = 0.3  # chance an anchor is swapped for a freshly launched item of its cluster
_BOOST_SECONDS = 2 * 86400.0  # length of the launch boost
_GAP_MEDIAN_S = 25.0  # median seconds between views in a session (lognormal)
_GAP_SIGMA = 1.0
_SAMPLE_RETRIES = (
    4  # re-draws for items not launched yet before falling back to the cluster's top item
)

_TYPES = (EventType.VIEW, EventType.ADD_TO_CART, EventType.PURCHASE)
_VIEW, _CART, _PURCHASE = 0, 1, 2


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass(frozen=True)
class SynthConfig:
    """Size and shape of a synthetic log; validated on construction (ConfigError).

    ``drift_rate`` is the chance, per session, that the user's dominant cluster
    moves to another cluster. ``session_length_mean`` is the mean number of
    *views* per session (carts and purchases come on top). ``days`` is the
    period over which sessions start (events of the last sessions may run a
    few minutes past it). ``new_item_fraction`` is capped so that the most
    popular item of every cluster exists from the start.
    """

    users: int = 2000
    items: int = 1000
    events: int = 50_000
    clusters: int = 20
    seed: int = 0
    start_time: float = 1_700_000_000.0
    days: float = 14.0
    popularity_exponent: float = 1.1
    conversion_rate: float = 0.03
    drift_rate: float = 0.05
    new_item_fraction: float = 0.1
    session_length_mean: float = 6.0

    def __post_init__(self) -> None:
        for name in ("users", "items", "events", "clusters", "seed"):
            v = getattr(self, name)
            if not _is_int(v):
                raise ConfigError(f"synth {name}={v!r} must be an integer")
        for name in (
            "start_time",
            "days",
            "popularity_exponent",
            "conversion_rate",
            "drift_rate",
            "new_item_fraction",
            "session_length_mean",
        ):
            v = getattr(self, name)
            if not _is_num(v) or not math.isfinite(float(v)):
                raise ConfigError(f"synth {name}={v!r} must be a finite number")
        if self.users < 1:
            raise ConfigError(f"synth users={self.users} must be >= 1")
        if self.items < 1:
            raise ConfigError(f"synth items={self.items} must be >= 1")
        if self.events < 0:
            raise ConfigError(f"synth events={self.events} must be >= 0")
        if not 1 <= self.clusters <= self.items:
            raise ConfigError(
                f"synth clusters={self.clusters} must be between 1 and items={self.items}"
            )
        if self.seed < 0:
            raise ConfigError(f"synth seed={self.seed} must be >= 0")
        if not self.days > 0:
            raise ConfigError(f"synth days={self.days} must be > 0")
        if not self.popularity_exponent >= 0:
            raise ConfigError(f"synth popularity_exponent={self.popularity_exponent} must be >= 0")
        if not 0 <= self.conversion_rate <= 1:
            raise ConfigError(f"synth conversion_rate={self.conversion_rate} must be in [0, 1]")
        if not 0 <= self.drift_rate <= 1:
            raise ConfigError(f"synth drift_rate={self.drift_rate} must be in [0, 1]")
        if not 0 <= self.new_item_fraction < 1:
            raise ConfigError(f"synth new_item_fraction={self.new_item_fraction} must be in [0, 1)")
        if not self.session_length_mean >= 1:
            raise ConfigError(f"synth session_length_mean={self.session_length_mean} must be >= 1")

    @property
    def end_time(self) -> float:
        """``start_time + days`` in Unix seconds."""
        return float(self.start_time) + float(self.days) * 86400.0


class SynthCatalog:
    """Ground truth about the items of a synthetic log (O(items) memory).

    Attributes (numpy arrays indexed by item number ``i``; item ``i`` has id
    ``"i<i>"``):

    * ``cluster_of_item`` [items] int32: the item's taste cluster.
    * ``launch_time`` [items] float64: when the item appears first; ``start_time``
      for items that exist from the start.
    * ``is_new`` [items] bool: launched inside the log period.
    * ``price`` [items] float64: the item's stable price.
    * ``rank_in_cluster`` [items] int32: 0 = most popular item of its cluster.
    * ``popularity`` [items] float64: base probability of the item (cluster
      popularity times within-cluster power law; sums to 1).
    * ``cluster_popularity`` [clusters] float64: sums to 1.
    * ``cluster_size`` [clusters] int64.
    """

    def __init__(
        self,
        config: SynthConfig,
        cluster_of_item: np.ndarray,
        rank_in_cluster: np.ndarray,
        launch_time: np.ndarray,
        price: np.ndarray,
        cluster_popularity: np.ndarray,
        within_weight: np.ndarray,
    ) -> None:
        self.config = config
        self.n_items = int(config.items)
        self.n_users = int(config.users)
        self.n_clusters = int(config.clusters)
        self.cluster_of_item = cluster_of_item.astype(np.int32)
        self.rank_in_cluster = rank_in_cluster.astype(np.int32)
        self.launch_time = launch_time.astype(np.float64)
        self.is_new = self.launch_time > float(config.start_time)
        self.price = price.astype(np.float64)
        self.cluster_popularity = cluster_popularity.astype(np.float64)
        self.cluster_size = np.bincount(self.cluster_of_item, minlength=self.n_clusters).astype(
            np.int64
        )

        # Items ordered by (cluster, rank): the layout the sampler works on.
        self._order = np.lexsort((self.rank_in_cluster, self.cluster_of_item)).astype(np.int64)
        self._offsets = np.zeros(self.n_clusters + 1, dtype=np.int64)
        np.cumsum(self.cluster_size, out=self._offsets[1:])
        w = within_weight[self._order].astype(np.float64)
        cl = self.cluster_of_item[self._order].astype(np.int64)
        # within-cluster normalised weights, and key[k] = cluster + cumulative share
        # (the last item of cluster c has key exactly c + 1), so an item of cluster
        # c with the power-law popularity is searchsorted(key, c + U[0, 1)).
        totals = np.bincount(cl, weights=w, minlength=self.n_clusters)
        share = w / totals[cl]
        cum = np.cumsum(share)
        start_cum = np.concatenate(([0.0], cum))[self._offsets[:-1]]
        within_cum = cum - start_cum[cl]
        within_cum[self._offsets[1:] - 1] = 1.0
        self._key = cl + within_cum
        pop = np.empty(self.n_items, dtype=np.float64)
        pop[self._order] = share * self.cluster_popularity[cl]
        self.popularity = pop
        # new items sorted by launch time (for the launch boost)
        new_idx = np.flatnonzero(self.is_new)
        self._new_by_launch = new_idx[np.argsort(self.launch_time[new_idx], kind="stable")].astype(
            np.int64
        )
        self._new_launch_sorted = self.launch_time[self._new_by_launch]

    @staticmethod
    def item_id(i: int) -> str:
        """The item's string id, ``"i<i>"``."""
        return f"i{int(i)}"

    @staticmethod
    def user_id(u: int) -> str:
        """The user's string id, ``"u<u>"``."""
        return f"u{int(u)}"

    @staticmethod
    def item_index(item_id: str) -> int:
        """Inverse of :meth:`item_id`."""
        return int(item_id[1:])

    @staticmethod
    def user_index(user_id: str) -> int:
        """Inverse of :meth:`user_id`."""
        return int(user_id[1:])

    @property
    def item_ids(self) -> list[str]:
        """All item ids in item-number order (built on each call; O(items))."""
        return [f"i{i}" for i in range(self.n_items)]

    def items_in_cluster(self, c: int) -> np.ndarray:
        """Item numbers of cluster ``c``, most popular first."""
        if not 0 <= c < self.n_clusters:
            raise IndexError(f"cluster {c} out of range 0..{self.n_clusters - 1}")
        return self._order[self._offsets[c] : self._offsets[c + 1]].copy()

    def __repr__(self) -> str:
        return (
            f"SynthCatalog(items={self.n_items}, clusters={self.n_clusters}, "
            f"new_items={int(self.is_new.sum())})"
        )


def _rng(config: SynthConfig, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(config.seed), stream, 0x5EED])


def make_catalog(config: SynthConfig) -> SynthCatalog:
    """Draw the items' clusters, popularity ranks, prices and launch times."""
    rng = _rng(config, 0)
    n, C = int(config.items), int(config.clusters)
    # cluster sizes vary (lognormal shares); every cluster gets at least one item
    size_share = rng.lognormal(0.0, 0.6, C)
    size_share /= size_share.sum()
    cluster = np.empty(n, dtype=np.int64)
    cluster[:C] = np.arange(C)
    cluster[C:] = rng.choice(C, size=n - C, p=size_share)
    cluster = cluster[rng.permutation(n)]  # item numbers carry no cluster information
    # cluster popularity: power law over a random order of the clusters
    cpop = (np.arange(1, C + 1, dtype=np.float64)) ** (-0.5 * float(config.popularity_exponent))
    cpop = cpop[rng.permutation(C)]
    cpop /= cpop.sum()
    # rank inside the cluster: random order; weight (rank + 1) ** -exponent
    order = np.lexsort((rng.random(n), cluster))
    sizes = np.bincount(cluster, minlength=C)
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(offsets[:-1], sizes)
    within = (rank + 1.0) ** (-float(config.popularity_exponent))
    # new items: never the top item of a cluster
    launch = np.full(n, float(config.start_time))
    n_new = min(round(float(config.new_item_fraction) * n), n - C)
    if n_new > 0:
        candidates = np.flatnonzero(rank > 0)
        new = rng.choice(candidates, size=n_new, replace=False)
        period = config.end_time - float(config.start_time)
        launch[new] = float(config.start_time) + period * rng.uniform(0.05, 0.95, n_new)
    # stable prices: a per-cluster level times per-item noise
    level = np.exp(rng.normal(3.0, 0.7, C))
    price = np.maximum(0.5, np.round(level[cluster] * np.exp(rng.normal(0.0, 0.5, n)), 2))
    return SynthCatalog(config, cluster, rank, launch, price, cpop, within)


# ----------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------


class _Users:
    """Per-user state: activity, dominant cluster (drifts), secondary clusters."""

    def __init__(self, config: SynthConfig, catalog: SynthCatalog) -> None:
        rng = _rng(config, 1)
        U, C = int(config.users), int(config.clusters)
        act = rng.lognormal(0.0, _USER_ACTIVITY_SIGMA, U)
        self.activity_cdf = np.cumsum(act)
        self.activity_cdf /= self.activity_cdf[-1]
        ccdf = np.cumsum(catalog.cluster_popularity)
        ccdf /= ccdf[-1]
        self.cluster_cdf = ccdf
        self.dom = _draw_cluster(rng, ccdf, U).astype(np.int32)
        n_taste = rng.choice(3, size=U, p=[0.3, 0.4, 0.3]) + 1
        n_sec = np.minimum(n_taste, C) - 1
        sec = _draw_cluster(rng, ccdf, 2 * U).reshape(U, 2)
        if C > 1:  # a secondary cluster differs from the dominant one
            same = sec == self.dom[:, None]
            shift = rng.integers(1, C, size=(U, 2))
            sec = np.where(same, (sec + shift) % C, sec)
        self.sec = sec.astype(np.int32)
        self.n_sec = n_sec.astype(np.int8)
        self.w_dom = np.where(n_sec == 0, 1.0, rng.uniform(0.6, 0.85, U)).astype(np.float32)

    def taste_draw(
        self, rng: np.random.Generator, users: np.ndarray, dom: np.ndarray
    ) -> np.ndarray:
        """A cluster drawn from each user's taste mix (``dom`` = current dominant cluster)."""
        r = rng.random(users.size)
        w = self.w_dom[users].astype(np.float64)
        ns = self.n_sec[users].astype(np.int64)
        use_sec = (r >= w) & (ns > 0)
        j = np.minimum(
            ((r - w) / np.maximum(1.0 - w, 1e-12) * ns).astype(np.int64), np.maximum(ns - 1, 0)
        )
        j = np.clip(j, 0, 1)
        return np.where(use_sec, self.sec[users, j], dom).astype(np.int64)


def _draw_cluster(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), cdf.size - 1)


def _segment_starts(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(lengths.size, dtype=np.int64)
    if lengths.size > 1:
        np.cumsum(lengths[:-1], out=out[1:])
    return out


@dataclass
class _Batch:
    """Events of one window (or the carry-over), as columns."""

    time: np.ndarray  # float64
    user: np.ndarray  # int64
    item: np.ndarray  # int64
    kind: np.ndarray  # int8: 0 view, 1 cart, 2 purchase
    session: np.ndarray  # int64

    @staticmethod
    def empty() -> _Batch:
        return _Batch(
            np.empty(0, np.float64),
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.empty(0, np.int8),
            np.empty(0, np.int64),
        )

    def take(self, idx: np.ndarray | slice) -> _Batch:
        return _Batch(
            self.time[idx], self.user[idx], self.item[idx], self.kind[idx], self.session[idx]
        )

    @staticmethod
    def concat(a: _Batch, b: _Batch) -> _Batch:
        return _Batch(
            *(
                np.concatenate((getattr(a, f), getattr(b, f)))
                for f in ("time", "user", "item", "kind", "session")
            )
        )


class _Generator:
    def __init__(self, config: SynthConfig, catalog: SynthCatalog) -> None:
        self.cfg = config
        self.cat = catalog
        self.users = _Users(config, catalog)
        self.rng = _rng(config, 2)
        self.n_sessions = 0
        cr = float(config.conversion_rate)
        self.p_buy = max(_CART_TO_PURCHASE, cr)
        self.p_cart = cr / self.p_buy if self.p_buy > 0 else 0.0
        # activity bins over the period, grouped into windows of ~_WINDOW_EVENTS
        t0, period, N = float(config.start_time), float(config.days) * 86400.0, int(config.events)
        n_bins = max(1, math.ceil(period / _BIN_SECONDS), math.ceil(N / _WINDOW_EVENTS))
        self.bin_edges = t0 + period * np.arange(n_bins + 1) / n_bins
        mid = (self.bin_edges[:-1] + self.bin_edges[1:]) / 2
        hour = (mid % 86400.0) / 3600.0
        self.bin_w = 1.0 + _DAILY_AMPLITUDE * np.cos(2 * np.pi * (hour - _DAILY_PEAK_HOUR) / 24.0)
        per_bin = N / n_bins
        k = max(1, int(_WINDOW_EVENTS // max(per_bin, 1e-9)))
        self.win_bins = [(b, min(b + k, n_bins)) for b in range(0, n_bins, k)]
        wsum = np.array([self.bin_w[a:b].sum() for a, b in self.win_bins])
        self.win_budget = (
            self.rng.multinomial(N, wsum / wsum.sum()) if N > 0 else np.zeros(len(wsum), np.int64)
        )

    # -- items ----------------------------------------------------------------
    def _sample_items(self, clusters: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Power-law item of each cluster that is launched by time ``t``."""
        cat, rng = self.cat, self.rng
        key, order, launch = cat._key, cat._order, cat.launch_time
        pos = np.searchsorted(key, clusters + rng.random(clusters.size), side="right")
        pos = np.minimum(pos, cat._offsets[clusters + 1] - 1)
        items = order[pos]
        bad = np.flatnonzero(launch[items] > t)
        for _ in range(_SAMPLE_RETRIES):
            if bad.size == 0:
                break
            c = clusters[bad]
            p = np.minimum(
                np.searchsorted(key, c + rng.random(bad.size), side="right"),
                cat._offsets[c + 1] - 1,
            )
            items[bad] = order[p]
            bad = bad[launch[items[bad]] > t[bad]]
        if bad.size:
            items[bad] = order[cat._offsets[clusters[bad]]]  # the top item always exists
        return items

    def _boost(
        self, items: np.ndarray, clusters: np.ndarray, t: np.ndarray, lo_t: float, hi_t: float
    ) -> None:
        """Swap some anchors for items launched in the last few days (in place)."""
        cat, rng = self.cat, self.rng
        if cat._new_by_launch.size == 0 or items.size == 0:
            return
        a = np.searchsorted(cat._new_launch_sorted, lo_t - _BOOST_SECONDS, side="left")
        b = np.searchsorted(cat._new_launch_sorted, hi_t, side="right")
        if b <= a:
            return
        fresh = cat._new_by_launch[a:b]
        fc = cat.cluster_of_item[fresh].astype(np.int64)
        srt = np.argsort(fc, kind="stable")
        fresh, fc = fresh[srt], fc[srt]
        cand = np.flatnonzero(rng.random(items.size) < _BOOST_CHANCE)
        if cand.size == 0:
            return
        c = clusters[cand]
        lo = np.searchsorted(fc, c, side="left")
        hi = np.searchsorted(fc, c, side="right")
        has = hi > lo
        cand, lo, hi = cand[has], lo[has], hi[has]
        pick = fresh[lo + (rng.random(cand.size) * (hi - lo)).astype(np.int64)]
        age = t[cand] - cat.launch_time[pick]
        # boost decays with age: accept with probability exp(-2 age / boost)
        ok = (
            (age >= 0)
            & (age <= _BOOST_SECONDS)
            & (rng.random(cand.size) < np.exp(-2.0 * age / _BOOST_SECONDS))
        )
        items[cand[ok]] = pick[ok]

    # -- one window -------------------------------------------------------------
    def window(self, w: int) -> _Batch:
        cfg, rng, us, cat = self.cfg, self.rng, self.users, self.cat
        B = int(self.win_budget[w])
        if B == 0:
            return _Batch.empty()
        # exact split of the budget into views, carts, purchases (P <= C <= V)
        probs = np.array([1.0, self.p_cart, self.p_cart * self.p_buy])
        V, C, P = (int(x) for x in rng.multinomial(B, probs / probs.sum()))
        P = min(P, C)
        if C > (B - P) // 2:
            C = (B - P) // 2
            P = min(P, C)
        V = B - C - P

        # sessions: lengths (views) until V views, last one trimmed
        m = float(cfg.session_length_mean)
        lengths = np.empty(0, np.int64)
        while lengths.sum() < V:
            more = rng.geometric(1.0 / m, size=int(V / m * 1.1) + 8)
            lengths = np.concatenate((lengths, more))
        cs = np.cumsum(lengths)
        S = int(np.searchsorted(cs, V, side="left")) + 1
        lengths = lengths[:S]
        lengths[-1] -= int(cs[S - 1] - V)

        # session start times: bin by the daily-cycle intensity, uniform inside
        b0, b1 = self.win_bins[w]
        bw = np.cumsum(self.bin_w[b0:b1])
        bins = b0 + np.minimum(
            np.searchsorted(bw / bw[-1], rng.random(S), side="right"), b1 - b0 - 1
        )
        start = self.bin_edges[bins] + rng.random(S) * (
            self.bin_edges[bins + 1] - self.bin_edges[bins]
        )
        start.sort()
        user = np.minimum(
            np.searchsorted(us.activity_cdf, rng.random(S), side="right"), us.activity_cdf.size - 1
        )
        sess_id = self.n_sessions + np.arange(S, dtype=np.int64)
        self.n_sessions += S

        # drift, applied in each user's session order
        dom = self._drift(user, start)
        explore = rng.random(S) < _EXPLORE
        scl = np.where(
            explore, _draw_cluster(rng, us.cluster_cdf, S), us.taste_draw(rng, user, dom)
        )

        # anchors: about one per _VIEWS_PER_ANCHOR views
        A = 1 + (lengths - 1) // _VIEWS_PER_ANCHOR
        a_sess = np.repeat(np.arange(S), A)
        in_sc = rng.random(a_sess.size) < _ANCHOR_IN_SESSION_CLUSTER
        a_cl = np.where(in_sc, scl[a_sess], us.taste_draw(rng, user[a_sess], dom[a_sess]))
        a_t = start[a_sess]
        a_item = self._sample_items(a_cl, a_t)
        self._boost(a_item, a_cl, a_t, float(self.bin_edges[b0]), float(self.bin_edges[b1]))

        # views: each walks through the session's anchors in order
        v_sess = np.repeat(np.arange(S), lengths)
        v_first = _segment_starts(lengths)
        pos = np.arange(V) - v_first[v_sess]
        v_anchor = _segment_starts(A)[v_sess] + pos * A[v_sess] // lengths[v_sess]
        item = a_item[v_anchor].copy()
        new_anchor = np.ones(V, dtype=bool)
        new_anchor[1:] = v_anchor[1:] != v_anchor[:-1]
        nb = np.flatnonzero(~new_anchor & (rng.random(V) >= _REPEAT_ANCHOR))
        if nb.size:
            base = item[nb]
            c = cat.cluster_of_item[base].astype(np.int64)
            r = cat.rank_in_cluster[base].astype(np.int64)
            step = rng.geometric(0.5, nb.size) * np.where(rng.random(nb.size) < 0.5, -1, 1)
            size = cat._offsets[c + 1] - cat._offsets[c]
            r2 = np.abs(r + step)  # reflect at the top of the cluster
            r2 = np.where(r2 >= size, np.maximum(size - 1 - (r2 - size), 0), r2)
            r2 = np.clip(r2, 0, size - 1)
            cand = cat._order[cat._offsets[c] + r2]
            ok = cat.launch_time[cand] <= start[v_sess[nb]]
            item[nb[ok]] = cand[ok]

        # view times: t0, then lognormal gaps (seconds to minutes)
        gaps = np.clip(rng.lognormal(math.log(_GAP_MEDIAN_S), _GAP_SIGMA, V), 1.0, 1800.0)
        gaps[v_first] = 0.0
        cg = np.cumsum(gaps)
        v_time = start[v_sess] + (cg - cg[v_first][v_sess])
        last_view = v_time[v_first + lengths - 1]

        # funnel: C views carted, P of those carts purchased
        cart_v = np.sort(rng.choice(V, size=C, replace=False)) if C else np.empty(0, np.int64)
        c_time = v_time[cart_v] + rng.uniform(3.0, 90.0, C)
        buy_c = np.sort(rng.choice(C, size=P, replace=False)) if P else np.empty(0, np.int64)
        bv = cart_v[buy_c]
        checkout = last_view[v_sess[bv]] + rng.uniform(30.0, 300.0, P)
        p_time = np.maximum(checkout, c_time[buy_c] + rng.uniform(5.0, 60.0, P))

        t = np.round(np.concatenate((v_time, c_time, p_time)), 3)
        vc = np.concatenate((np.arange(V), cart_v, bv))
        kind = np.concatenate(
            (np.zeros(V, np.int8), np.full(C, _CART, np.int8), np.full(P, _PURCHASE, np.int8))
        )
        return _Batch(t, user[v_sess[vc]], item[vc], kind, sess_id[v_sess[vc]])

    def _drift(self, user: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Each session's dominant cluster after drift; updates the users' state."""
        us, rng = self.users, self.rng
        S = user.size
        d = rng.random(S) < float(self.cfg.drift_rate)
        target = _draw_cluster(rng, us.cluster_cdf, S)
        order = np.lexsort((start, user))
        u_s, d_s, tg_s = user[order], d[order], target[order]
        idx = np.arange(S)
        first = np.ones(S, dtype=bool)
        first[1:] = u_s[1:] != u_s[:-1]
        g_first = np.maximum.accumulate(np.where(first, idx, 0))
        last_d = np.maximum.accumulate(np.where(d_s, idx, -1))
        drifted = last_d >= g_first
        dom_s = np.where(drifted, tg_s[np.maximum(last_d, 0)], us.dom[u_s]).astype(np.int64)
        last = np.ones(S, dtype=bool)
        last[:-1] = first[1:]
        us.dom[u_s[last]] = dom_s[last]
        dom = np.empty(S, dtype=np.int64)
        dom[order] = dom_s
        return dom

    # -- the stream -------------------------------------------------------------
    def batches(self) -> Iterator[_Batch]:
        """Time-ordered batches; every event of a batch is final (no later event is earlier)."""
        carry = _Batch.empty()
        n_w = len(self.win_bins)
        for w in range(n_w):
            new = self.window(w)
            allb = _Batch.concat(carry, new) if carry.time.size else new
            srt = np.argsort(allb.time, kind="stable")
            allb = allb.take(srt)
            if w == n_w - 1:
                cut = allb.time.size
            else:
                cut = int(
                    np.searchsorted(allb.time, self.bin_edges[self.win_bins[w][1]], side="left")
                )
            carry = allb.take(slice(cut, None))
            if cut:
                yield allb.take(slice(0, cut))


def _check_catalog(config: SynthConfig, catalog: SynthCatalog) -> None:
    if catalog.n_items != config.items or catalog.n_clusters != config.clusters:
        raise ConfigError(
            f"catalog has {catalog.n_items} items / {catalog.n_clusters} clusters, "
            f"config wants {config.items} / {config.clusters}"
        )


def generate_events(config: SynthConfig, catalog: SynthCatalog | None = None) -> Iterator[Event]:
    """Yield exactly ``config.events`` events in non-decreasing time order.

    ``catalog`` defaults to ``make_catalog(config)``; passing that same catalog
    gives the same log (ConfigError if it does not fit the config). Memory is
    O(users + items + events per window), whatever ``config.events``.
    """
    if catalog is None:
        catalog = make_catalog(config)
    else:
        _check_catalog(config, catalog)
    return _events(_Generator(config, catalog))


def _events(gen: _Generator) -> Iterator[Event]:
    n = 0
    types, qty = _TYPES, (None, 1, 1)
    price_all = gen.cat.price
    for b in gen.batches():
        prices = price_all[b.item].tolist()
        for t, u, i, k, s, p in zip(
            b.time.tolist(),
            b.user.tolist(),
            b.item.tolist(),
            b.kind.tolist(),
            b.session.tolist(),
            prices,
        ):
            yield Event(f"u{u}", f"i{i}", types[k], t, f"e{n}", f"s{s}", qty[k], p if k else None)
            n += 1


def write_log(path: str | os.PathLike[str], config: SynthConfig, *, progress: bool = False) -> int:
    """Write the log as JSON lines (gzip when ``path`` ends with ``.gz``); return the number of events.

    Lines are :func:`model_core.events.event_to_json`. The gzip header carries
    no timestamp, so the same config gives the same bytes. With ``progress`` a
    tqdm bar goes to stderr.
    """
    p = os.fspath(path)
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=int(config.events), unit="ev", unit_scale=True, file=sys.stderr, desc="synth"
        )
    n = 0
    try:
        with contextlib.ExitStack() as stack:
            binary: Any = stack.enter_context(open(p, "wb"))
            if p.endswith(".gz"):
                binary = stack.enter_context(
                    gzip.GzipFile(filename="", mode="wb", fileobj=binary, compresslevel=6, mtime=0)
                )
            out = stack.enter_context(io.TextIOWrapper(binary, encoding="utf-8", newline="\n"))
            lines: list[str] = []
            for ev in generate_events(config):
                lines.append(event_to_json(ev))
                if len(lines) >= 8192:
                    out.write("\n".join(lines) + "\n")
                    n += len(lines)
                    if bar is not None:
                        bar.update(len(lines))
                    lines = []
            if lines:
                out.write("\n".join(lines) + "\n")
                n += len(lines)
                if bar is not None:
                    bar.update(len(lines))
    finally:
        if bar is not None:
            bar.close()
    return n

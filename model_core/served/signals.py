"""The served model's online signals: candidate sources and the ranker that merges them.

``StreamSignals`` is learned from the event stream alone (no retrain) and is
independent of the MF model version, so a worker carries it over when it swaps a
new model in. It holds, over one growing item vocabulary:

- trending (event-time decayed popularity) and all-time popularity, per item;
- item categories, where events or the catalog carry them (category trending);
- ``sr``: directional sequential rules "a, then b within ``sr_steps`` items of one
  session", weighted ``w(b) / gap`` (Ludewig & Jannach's SR, online);
- ``covisit``: symmetric co-visitation within a user's last ``covisit_window``
  items, whatever the time between them (repeat buyers, baskets, ratings);
- the ranker: a linear softmax model over per-candidate features, trained online
  by :meth:`StreamSignals.learn_examples`: each event is the label of the list that
  was due just before it.

All state is keyed by item; per-user state stays in ``UserHistory``. Every
update is finite for any validated event (exponents are clamped, no overflow
for events far out of time order).
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict, deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from time import perf_counter
from typing import TypeAlias

import numpy as np

from model_core.config import EventWeights
from model_core.events import Event

__all__ = ["FEATURES", "Candidates", "Examples", "SignalsConfig", "StageClock", "StreamSignals"]

Sequence_: TypeAlias = tuple[str, list[tuple[str, float]], list[tuple[str, float, float]]]
"""What ``learn_sequences`` takes per user: (session key, earlier items, new events)."""

_MAX_EXP = 60.0  # 2**60: rescale trending to a new anchor beyond this
_MIN_EXP = -1000.0  # 2**-1000 is 0 for all purposes and still a normal float

FEATURES = (
    "sr_last", "sr_last_norm", "sr_ctx", "covisit", "covisit_norm", "knn", "knn_norm",
    "sr_rank", "covisit_rank", "knn_rank",
    "fold_score", "fold_rank", "fold_hit", "trend", "trend_rank", "popularity",
    "same_category", "category_rank", "freshness",
    "sr_x_hist", "fold_x_hist", "covisit_x_hist", "trend_x_hist", "sr_x_new_session", "covisit_x_new_session",
)
_F = len(FEATURES)
_IX = {name: i for i, name in enumerate(FEATURES)}


@dataclass(frozen=True)
class SignalsConfig:
    """Defaults chosen for mechanism, not for one log (see docs/model_core.md)."""

    trending_half_life_s: float = 86400.0
    session_gap_s: float = 1800.0  # SR rules only within one session (no gap above this)
    sr_steps: int = 10  # SR: rules up to this many items apart
    covisit_window: int = 5  # co-visitation: pairs among a user's last N distinct items
    neighbours: int = 50  # top edges kept per item for candidate generation
    max_edges: int = 1000  # edges per item before the weaker half is pruned
    context: int = 5  # a user's last N items query the item graphs
    knn_sessions: int = 65536  # recent sessions kept for session kNN (ring buffer)
    knn_session_len: int = 20  # newest distinct items kept per session
    knn_postings: int = 50  # most recent sessions remembered per item
    knn_query: int = 5  # a user's newest items that look for neighbour sessions
    knn_neighbours: int = 100  # most similar sessions that vote
    source_candidates: int = 30  # best candidates per user kept from each item-graph / kNN source
    fold_candidates: int = 30  # from the fold-in embedding through the index
    trending_candidates: int = 30
    category_candidates: int = 20
    hidden: int = 16  # ranker: linear part plus this many tanh units (0 = linear only)
    learning_rate: float = 0.1
    replay: int = 0  # earlier lists re-learned per new list (0 = none)
    replay_lists: int = 4096  # lists kept for replay
    rms_decay: float = 1.0  # 1.0 = Adagrad; below 1, RMSprop (a step size that does not vanish)
    train_per_batch: int = 16  # most events a batch trains the ranker on, per started 256 events


# Prior weights: a sensible list before the ranker has seen any event.
_PRIOR = {"knn_norm": 1.0, "sr_last_norm": 1.0, "sr_ctx": 0.5, "covisit_norm": 1.0, "covisit": 0.3, "fold_rank": 1.0,
          "trend_rank": 0.3, "category_rank": 0.2, "trend": 0.2}


class _ItemGraph:
    """Weighted item -> item edges, learned online, with a lazily refreshed top-M table."""

    def __init__(self, m: int, max_edges: int) -> None:
        self.m = m
        self.max_edges = max_edges
        self.edges: list[dict[int, float]] = []
        self.top_rows = np.full((0, m), -1, dtype=np.int64)
        self.top_w = np.zeros((0, m), dtype=np.float64)
        self.dirty = np.zeros(0, dtype=bool)

    def grow(self, n: int) -> None:
        have = len(self.edges)
        if n <= have:
            return
        self.edges.extend({} for _ in range(n - have))
        cap = len(self.dirty)
        if n >= cap:  # the last row stays empty: ``neighbours`` reads row -1 for padding
            new = max(n + 1, 2 * cap, 1024)
            self.top_rows = np.concatenate([self.top_rows, np.full((new - cap, self.m), -1, np.int64)])
            self.top_w = np.concatenate([self.top_w, np.zeros((new - cap, self.m))])
            self.dirty = np.concatenate([self.dirty, np.zeros(new - cap, dtype=bool)])

    def add_many(self, a: list[int], b: list[int], w: list[float]) -> None:
        """Add each weight ``w[i]`` to its edge (``a[i]``, ``b[i]``), in order; the rows ``a``
        are refreshed on next use."""
        rows = self.edges
        cap = self.max_edges
        for x, y, v in zip(a, b, w):
            e = rows[x]
            e[y] = e.get(y, 0.0) + v
            if len(e) > cap:
                keep = sorted(e.items(), key=lambda kv: kv[1], reverse=True)[: cap // 2]
                e.clear()
                e.update(keep)
        if a:
            self.dirty[a] = True

    def _refresh(self, need: np.ndarray) -> None:
        """Recompute the top-M table of the rows ``need``: rows with at most M edges in one
        scatter, in edge order; larger rows one by one (their M heaviest)."""
        m, edges = self.m, self.edges
        rows = need.tolist()
        lens = np.fromiter((len(edges[r]) for r in rows), np.int64, len(rows))
        total = int(lens.sum())
        keys = np.fromiter(chain.from_iterable(edges[r] for r in rows), np.int64, total)
        vals = np.fromiter(chain.from_iterable(edges[r].values() for r in rows), np.float64, total)
        self.top_rows[need] = -1
        self.top_w[need] = 0.0
        start = np.cumsum(lens) - lens
        seg = np.repeat(np.arange(len(rows)), lens)
        small = (lens <= m)[seg]
        col = np.arange(total) - start[seg]
        self.top_rows[need[seg[small]], col[small]] = keys[small]
        self.top_w[need[seg[small]], col[small]] = vals[small]
        for i in np.flatnonzero(lens > m).tolist():
            k, v = keys[start[i]:start[i] + lens[i]], vals[start[i]:start[i] + lens[i]]
            part = np.argpartition(-v, m - 1)[:m]
            self.top_rows[rows[i]] = k[part]
            self.top_w[rows[i]] = v[part]
        self.dirty[need] = False

    def neighbours(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-M neighbour rows and weights of ``rows`` (any shape; -1 = none): shape + (M,)."""
        flat = rows.reshape(-1)
        need = flat[self.dirty[flat]]  # padding (-1) reads the last row: empty, never dirty
        if len(need):
            self._refresh(np.unique(need))
        m = self.m
        return self.top_rows[flat].reshape(*rows.shape, m), self.top_w[flat].reshape(*rows.shape, m)


class _SessionStore:
    """Recent sessions for session kNN: a ring of slots, and per item its latest sessions.

    A slot holds one session's newest distinct items (rows, newest first). Each
    item remembers the last ``postings`` (slot, generation) pairs it appeared in;
    a recycled slot gets a new generation, so stale postings are ignored.
    """

    def __init__(self, slots: int, length: int, postings: int) -> None:
        self.items = np.full((slots, length), -1, dtype=np.int64)
        self.gen = np.zeros(slots, dtype=np.int64)
        self.last_time = np.full(slots, -np.inf)
        self.p = postings
        self.post_slot = np.full((0, postings), -1, dtype=np.int64)
        self.post_gen = np.full((0, postings), -1, dtype=np.int64)
        self.post_next = np.zeros(0, dtype=np.int64)
        self.owner: dict[str, tuple[int, int]] = {}  # session key -> (slot, generation)
        self._next = 0

    def grow(self, n: int) -> None:
        have = len(self.post_next)
        if n > have:
            new = max(n, 2 * have, 1024) - have
            self.post_slot = np.concatenate([self.post_slot, np.full((new, self.p), -1, np.int64)])
            self.post_gen = np.concatenate([self.post_gen, np.full((new, self.p), -1, np.int64)])
            self.post_next = np.concatenate([self.post_next, np.zeros(new, np.int64)])

    def slot_of(self, key: str, time: float, gap_s: float) -> int:
        """The key's current slot; a new one when it has none or was idle longer than ``gap_s``."""
        have = self.owner.get(key)
        if have is not None:
            slot, g = have
            if self.gen[slot] == g and abs(time - self.last_time[slot]) <= gap_s:
                return slot
        slot = self._next
        self._next = (self._next + 1) % len(self.gen)
        self.gen[slot] += 1
        self.items[slot] = -1
        self.last_time[slot] = time
        self.owner[key] = (slot, int(self.gen[slot]))
        if len(self.owner) > 2 * len(self.gen):  # forget keys whose slot was recycled
            self.owner = {k: v for k, v in self.owner.items() if self.gen[v[0]] == v[1]}
        return slot

    def forget(self, key: str) -> None:
        """Drop the key's session: its slot is emptied and recycled (its postings go stale)."""
        have = self.owner.pop(key, None)
        if have is not None and self.gen[have[0]] == have[1]:
            slot = have[0]
            self.gen[slot] += 1
            self.items[slot] = -1
            self.last_time[slot] = -np.inf

    @property
    def next_slot(self) -> int:
        """The slot ``slot_of`` hands out next when it starts a session."""
        return self._next

    def own_slot(self, key: str) -> int:
        have = self.owner.get(key)
        return have[0] if have is not None and self.gen[have[0]] == have[1] else -1

    def put_many(self, slots: list[int], chains: list[list[int]], times: list[float], posts: list[list[int]]) -> None:
        """Set sessions (distinct slots): each slot's items (newest first, cut to the session
        length) and last time, and post it on its new items (each row once; not again where
        this slot and generation already did). The result is that of one session after the
        other: slots are set in one scatter, and postings go in rounds (only a row's own
        postings interact, so round t takes each row's t-th)."""
        if not slots:
            return
        if len(set(slots)) < len(slots):
            raise ValueError("put_many: a slot twice in one call")
        length = self.items.shape[1]
        s = np.array(slots, np.int64)
        lens = np.array([min(len(c), length) for c in chains], np.int64)
        items = np.fromiter(chain.from_iterable(c[:length] for c in chains), np.int64, int(lens.sum()))
        who = np.repeat(np.arange(len(s)), lens)
        self.items[s] = -1
        self.items[s[who], np.arange(len(who)) - (np.cumsum(lens) - lens)[who]] = items
        self.last_time[s] = np.maximum(self.last_time[s], times)
        distinct = [list(dict.fromkeys(p)) for p in posts]  # each row once per session, in order
        counts = np.array([len(d) for d in distinct], np.int64)
        rows = np.fromiter(chain.from_iterable(distinct), np.int64, int(counts.sum()))
        who = np.repeat(np.arange(len(s)), counts)
        order = np.argsort(rows, kind="stable")  # by row, batch order within a row
        rows, who = rows[order], who[order]
        nth = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
        gen = self.gen[s]
        for t in range(int(nth.max(initial=-1)) + 1):
            at = nth == t
            r, slot, g = rows[at], s[who[at]], gen[who[at]]
            fresh = ~((self.post_slot[r] == slot[:, None]) & (self.post_gen[r] == g[:, None])).any(axis=1)
            r, slot, g = r[fresh], slot[fresh], g[fresh]
            j = self.post_next[r]
            self.post_slot[r, j] = slot
            self.post_gen[r, j] = g
            self.post_next[r] = (j + 1) % self.p

    def scores(
        self, query: np.ndarray, own: np.ndarray, neighbours: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """V-SKNN votes for a batch: (user, row, score) from each user's query items [B, Q].

        Query weight ``1 / (1 + position)`` (position 0 = newest); similarity = dot
        product with a neighbour's binary item set; the ``neighbours`` most similar
        sessions vote ``similarity / distance`` to their item nearest the query's
        newest shared item.
        """
        b, q = query.shape
        qw = np.broadcast_to(1.0 / (1.0 + np.arange(q)), (b, q))
        safe = np.maximum(query, 0)
        ps = self.post_slot[safe]  # [B, Q, P]
        ok = (query >= 0)[:, :, None] & (ps >= 0)
        ok &= self.gen[np.maximum(ps, 0)] == self.post_gen[safe]
        ok &= ps != own[:, None, None]
        user = np.broadcast_to(np.arange(b)[:, None, None], ps.shape)[ok]
        qidx = np.broadcast_to(np.arange(q)[None, :, None], ps.shape)[ok]
        slot = ps[ok]
        w = np.broadcast_to(qw[:, :, None], ps.shape)[ok]
        empty = np.zeros(0, dtype=np.int64)
        if len(slot) == 0:
            return empty, empty, np.zeros(0)
        nslots = len(self.gen)
        key, inv = np.unique(user * nslots + slot, return_inverse=True)
        sim = np.bincount(inv, weights=w)
        newest = np.full(len(key), q)
        np.minimum.at(newest, inv, qidx)  # the query's newest item the session shares
        nu, ns = key // nslots, key % nslots
        order = np.lexsort((-self.last_time[ns], -sim, nu))
        nu, ns, sim, newest = nu[order], ns[order], sim[order], newest[order]
        rank = np.arange(len(nu)) - np.searchsorted(nu, nu, side="left")
        top = rank < neighbours
        nu, ns, sim, newest = nu[top], ns[top], sim[top], newest[top]
        items = self.items[ns]  # [N, Ls]
        match = np.argmax(items == query[nu, newest][:, None], axis=1)
        dist = np.abs(np.arange(items.shape[1])[None, :] - match[:, None])
        vote = np.where((items >= 0) & (dist > 0), sim[:, None] / np.maximum(dist, 1), 0.0)
        keep = vote > 0
        vu = np.broadcast_to(nu[:, None], items.shape)[keep]
        return vu, items[keep], vote[keep]


def _top_per_user(
    user: np.ndarray, row: np.ndarray, v: int, n: int, tiebreak: np.ndarray, score: np.ndarray, *more: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Sum ``score`` (and ``more``) per (user, row) and keep each user's n best rows.

    Returns (user, row, [summed score, summed more...]), sorted by user then score (equal
    scores by ``tiebreak[row]``).
    """
    user, row = user.ravel(), row.ravel()
    ok = row >= 0
    key = user[ok] * v + row[ok]
    vals = [score.ravel()[ok], *(m.ravel()[ok] for m in more)]
    uniq, inv = np.unique(key, return_inverse=True)
    sums = [np.bincount(inv, weights=x, minlength=len(uniq)) for x in vals]
    u, r = uniq // v, uniq % v
    order = np.lexsort((tiebreak[r], -sums[0], u))
    u, r = u[order], r[order]
    rank = np.arange(len(u)) - np.searchsorted(u, u, side="left")
    keep = (rank < n) & (sums[0][order] > 0)
    return u[keep], r[keep], [x[order][keep] for x in sums]


def _user_max(user: np.ndarray, val: np.ndarray, b: int) -> np.ndarray:
    """[B] each user's largest value (a tiny positive where a user has none)."""
    out = np.full(b, 1e-12)
    np.maximum.at(out, user, val)
    return out


def _rank_feature(user: np.ndarray, val: np.ndarray) -> np.ndarray:
    """1 / (1 + rank) of each value among its user's; rows already sorted by user, value desc."""
    return 1.0 / (1.0 + np.arange(len(user)) - np.searchsorted(user, user, side="left"))


class StageClock:
    """Seconds the served model spent per stage (fold-in, search, each candidate source, the
    feature table, ranking, learning), summed over calls. Off unless a caller sets
    ``StreamSignals.clock`` (``benchmarks/_model_only.py`` does); then each stage costs one
    ``perf_counter`` call more."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self._at = perf_counter()

    def start(self) -> None:
        self._at = perf_counter()

    def lap(self, stage: str) -> None:
        """Charge the time since the last ``start`` or ``lap`` to ``stage``."""
        now = perf_counter()
        self.seconds[stage] += now - self._at
        self._at = now


@dataclass
class Candidates:
    """A batch's candidate lists, flattened: candidate c belongs to user ``user[c]``."""

    user: np.ndarray  # [N] int64, sorted
    row: np.ndarray  # [N] int64 vocabulary rows
    x: np.ndarray  # [N, F] float64 features


@dataclass
class Examples:
    """The ranker's training lists, by position (no vocabulary rows): candidate i is in list
    ``list_of[i]`` (sorted, 0..lists-1), has features ``x[i]``, and is the item chosen when
    ``positive[i]``."""

    list_of: np.ndarray  # [N] int64
    x: np.ndarray  # [N, F]
    positive: np.ndarray  # [N] bool
    lists: int


class StreamSignals:
    """Online item statistics, item graphs and the ranker (see the module docstring).

    Keeps ``learn(events)`` / ``top(k, exclude)`` of the trending fallback it
    replaces: the served model's ``signals`` is also its trending fallback.
    """

    def __init__(self, config: SignalsConfig | None = None, weights: EventWeights | None = None) -> None:
        self.config = c = config or SignalsConfig()
        self.weights = weights or EventWeights()
        self.ids: list[str] = []
        self.rows: dict[str, int] = {}
        self._cap = 0
        self.trend = np.zeros(0)
        self.count = np.zeros(0)
        self.last_seen = np.zeros(0)
        self.category = np.zeros(0, dtype=np.int64)
        self.unavailable = np.zeros(0, dtype=bool)
        self.tiebreak = np.zeros(0, dtype=np.int64)  # per row, a hash of the item id: orders equal scores
        self.categories: dict[str, int] = {}
        self._members: list[list[int]] = []  # category -> rows
        self._anchor: float | None = None
        self.sr = _ItemGraph(c.neighbours, c.max_edges)
        self.covisit = _ItemGraph(c.neighbours, c.max_edges)
        self.sessions = _SessionStore(c.knn_sessions, c.knn_session_len, c.knn_postings)
        self.w = np.zeros(_F)
        for name, v in _PRIOR.items():
            self.w[_IX[name]] = v
        rng = np.random.default_rng(0)
        self.hw = rng.normal(0.0, 0.3, (c.hidden, _F))  # hidden layer [H, F]
        self.hb = np.zeros(c.hidden)
        self.hv = np.zeros(c.hidden)  # hidden -> score: 0, so the prior alone ranks at first
        self._g2 = [np.full(a.shape, 1e-6) for a in (self.w, self.hw, self.hb, self.hv)]
        self.trained_lists = 0
        self._buffer: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=c.replay_lists)
        self._rng = rng
        self.events = 0
        self.clock: StageClock | None = None  # per-stage timing, for benchmarks

    # -- vocabulary -------------------------------------------------------------

    def row(self, item: str) -> int:
        r = self.rows.get(item)
        if r is None:
            r = self.rows[item] = len(self.ids)
            self.ids.append(item)
            if r >= self._cap:
                self._grow(max(1024, 2 * self._cap))
            self.tiebreak[r] = zlib.crc32(item.encode("utf-8", "surrogatepass"))
            self.sr.grow(r + 1)
            self.covisit.grow(r + 1)
            self.sessions.grow(r + 1)
        return r

    def _grow(self, cap: int) -> None:
        extra = cap - self._cap
        self.trend = np.concatenate([self.trend, np.zeros(extra)])
        self.count = np.concatenate([self.count, np.zeros(extra)])
        self.last_seen = np.concatenate([self.last_seen, np.full(extra, -np.inf)])
        self.category = np.concatenate([self.category, np.full(extra, -1, np.int64)])
        self.unavailable = np.concatenate([self.unavailable, np.zeros(extra, dtype=bool)])
        self.tiebreak = np.concatenate([self.tiebreak, np.zeros(extra, np.int64)])
        self._cap = cap

    def rows_of(self, items: Iterable[str]) -> np.ndarray:
        """Rows of ``items``; new items get rows in order, as ``row`` hands them out."""
        items = items if isinstance(items, list) else list(items)
        get = self.rows.get
        out = np.array([get(i, -1) for i in items], dtype=np.int64)
        for j in np.flatnonzero(out < 0).tolist():
            out[j] = self.row(items[j])
        return out

    def set_category(self, items: Iterable[str], categories: Iterable[str | None]) -> None:
        """Item metadata (catalog or events): an item's category, None to clear it."""
        for item, cat in zip(items, categories):
            r = self.row(item)
            old = int(self.category[r])
            new = -1 if cat is None else self.categories.setdefault(cat, len(self.categories))
            if new == old:
                continue
            if old >= 0:
                self._members[old].remove(r)
            if new >= 0:
                while len(self._members) <= new:
                    self._members.append([])
                self._members[new].append(r)
            self.category[r] = new

    def set_available(self, items: Iterable[str], available: bool) -> None:
        for item in items:
            r = self.row(item)  # may grow the arrays: index after
            self.unavailable[r] = not available

    # -- learning ---------------------------------------------------------------

    def learn(self, events: Iterable[Event], histories: Mapping[str, object] | None = None) -> None:
        """Item statistics of a batch of events: trending, popularity, freshness, categories."""
        self.learn_items((ev.item_id, self.weights.of(ev), ev.time, ev.category) for ev in events)

    def learn_items(self, items: Iterable[tuple[str, float, float, str | None]]) -> None:
        """Item statistics from (item, event weight, time, category) in event order."""
        hl = self.config.trending_half_life_s
        for item, w, time, category in items:
            r = self.row(item)
            if category is not None and self.category[r] < 0:
                self.set_category([item], [category])
            if self._anchor is None:
                self._anchor = time
            e = (time - self._anchor) / hl
            if e > _MAX_EXP:  # move the anchor forward: older scores shrink (maybe to 0)
                self.trend *= 2.0 ** max(-e, _MIN_EXP)
                self._anchor = time
                e = 0.0
            self.trend[r] += w * 2.0 ** max(e, _MIN_EXP)
            self.count[r] += w
            self.last_seen[r] = max(self.last_seen[r], time)
            self.events += 1

    def learn_sequences(self, sequences: Iterable[Sequence_]) -> None:
        """Item graphs and sessions from each (session key, previous items [(item, time)] oldest
        first, new events [(item, weight, time)])."""
        c = self.config
        steps, gap_s, window = c.sr_steps, c.session_gap_s, c.covisit_window
        # edges (a, b, weight) in the order they are learned, as parallel lists
        sa: list[int] = []
        sb: list[int] = []
        sw: list[float] = []
        ca: list[int] = []
        cb: list[int] = []
        cw: list[float] = []
        slots: list[int] = []  # each session's slot, newest items, last time and new items
        chains: list[list[int]] = []
        times: list[float] = []
        posts: list[list[int]] = []
        used: set[int] = set()
        row = self.row
        for key, prev, new in sequences:
            if not new:
                continue
            ra = [row(a) for a, _ in prev]  # the session so far, distinct items, oldest first
            ta = [t for _, t in prev]
            for item, w, time in new:
                b = row(item)
                n = len(ra)
                gap = 0
                for j in range(n - 1, max(n - steps, 0) - 1, -1):
                    gap += 1
                    a = ra[j]
                    if a == b:
                        continue
                    if abs(time - ta[j]) <= gap_s:
                        sa.append(a)
                        sb.append(b)
                        sw.append(w / gap)
                    if gap <= window:
                        ca += (a, b)
                        cb += (b, a)
                        cw += (w, w)
                if b in ra:
                    j = ra.index(b)
                    del ra[j], ta[j]
                ra.append(b)
                ta.append(time)
            if self.sessions.next_slot in used:  # it may recycle a slot of this batch: put those first
                self.sessions.put_many(slots, chains, times, posts)
                used.clear()
                slots, chains, times, posts = [], [], [], []
            slot = self.sessions.slot_of(key, new[0][2], gap_s)
            used.add(slot)
            recent: list[int] = []  # the session's newest items, no gap above gap_s between them
            newest = ta[-1]
            for j in range(len(ra) - 1, max(len(ra) - c.knn_session_len, 0) - 1, -1):
                if abs(newest - ta[j]) > gap_s:
                    break
                recent.append(ra[j])
                newest = ta[j]
            slots.append(slot)
            chains.append(recent)
            times.append(max(t for _, _, t in new))
            posts.append([self.rows[i] for i, _, _ in new])
        self.sessions.put_many(slots, chains, times, posts)
        self.sr.add_many(sa, sb, sw)
        self.covisit.add_many(ca, cb, cw)

    # -- trending fallback --------------------------------------------------------

    def _best(self, rows: np.ndarray, t: int) -> np.ndarray:
        """The (at most) t of ``rows`` with the highest positive trend, best first; ties go by
        ``tiebreak``, so replicas whose vocabularies differ in row order still agree."""
        s = self.trend[rows]
        pos = s > 0
        rows, s = rows[pos], s[pos]
        if t < len(rows):
            kth = np.partition(s, len(s) - t)[len(s) - t]  # the t-th highest
            tie = s >= kth
            rows, s = rows[tie], s[tie]
        return rows[np.lexsort((self.tiebreak[rows], -s))[:t]]

    def top(self, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """The k most trending available items not in ``exclude``, best first."""
        n = len(self.ids)
        want = min(n, k + len(exclude) + int(self.unavailable[:n].sum()))
        if want <= 0:
            return []
        s = self.trend[:n]
        out: list[tuple[str, float]] = []
        for r in self._best(np.arange(n), want).tolist():
            item = self.ids[r]
            if item not in exclude and not self.unavailable[r]:
                out.append((item, float(s[r])))
                if len(out) == k:
                    break
        return out

    def _category_top(self, cats: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        """[B, t] rows of the most trending items in each category (-1 = none) and 1/(1+rank)."""
        b = len(cats)
        rows = np.full((b, t), -1, dtype=np.int64)
        rr = np.zeros((b, t))
        cache: dict[int, np.ndarray] = {}
        for i, cat in enumerate(cats.tolist()):
            if cat < 0:
                continue
            top = cache.get(cat)
            if top is None:
                top = cache[cat] = self._best(np.asarray(self._members[cat], dtype=np.int64), t)
            rows[i, : len(top)] = top
            rr[i, : len(top)] = 1.0 / (1.0 + np.arange(len(top)))
        return rows, rr

    # -- candidates and features ----------------------------------------------------

    def candidates(
        self,
        last: np.ndarray,
        last_t: np.ndarray,
        hist_len: np.ndarray,
        fold: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        own: np.ndarray | None = None,
    ) -> Candidates:
        """Merge every source's candidates for a batch of B users into one feature table.

        ``last`` [B, L]: rows of each user's L newest distinct items, newest first
        (-1 = padding); ``last_t`` [B, L] their times; ``hist_len`` [B] distinct items
        in the history; ``fold`` (user, row, score) of the fold-in candidates, in rank
        order per user; ``own`` [B] each user's own session slot (not a neighbour of
        itself). Each source keeps its ``source_candidates`` best per user. Items of
        the history are not removed here.
        """
        c = self.config
        b, depth = last.shape
        v = max(1, len(self.ids))
        n_src = c.source_candidates
        parts: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []

        def emit(user: np.ndarray, rows: np.ndarray, **feats: np.ndarray) -> None:
            parts.append((user, rows, feats))  # unique (user, row) within a source

        clock = self.clock
        if clock:
            clock.start()

        # sequential rules: the last item, and the last L items weighted 1/(1+position)
        nb, w = self.sr.neighbours(last)  # [B, L, M]
        u3 = np.broadcast_to(np.arange(b)[:, None, None], nb.shape)
        pos_w = (1.0 / (1.0 + np.arange(depth)))[None, :, None]
        su, sr_, (ctx, first) = _top_per_user(u3, nb, v, n_src, self.tiebreak, w * pos_w, np.where(
            np.arange(depth)[None, :, None] == 0, w, 0.0))
        emit(su, sr_, sr_last=np.log1p(first), sr_last_norm=first / _user_max(su, first, b)[su],
             sr_ctx=np.log1p(ctx), sr_rank=_rank_feature(su, ctx))
        if clock:
            clock.lap("sr")
        nb, w = self.covisit.neighbours(last)
        cu, cr, (cw,) = _top_per_user(u3, nb, v, n_src, self.tiebreak, w * (0.5 ** np.arange(depth))[None, :, None])
        emit(cu, cr, covisit=np.log1p(cw), covisit_norm=cw / _user_max(cu, cw, b)[cu],
             covisit_rank=_rank_feature(cu, cw))
        if clock:
            clock.lap("covisit")
        # session kNN over the user's current session (newest items, no gap above session_gap_s)
        q = min(c.knn_query, depth)
        query = last[:, :q].copy()
        if q > 1:
            cut = np.cumsum(np.abs(last_t[:, : q - 1] - last_t[:, 1:q]) > c.session_gap_s, axis=1) > 0
            query[:, 1:][cut] = -1
        ku, kr, ks = self.sessions.scores(query, own if own is not None else np.full(b, -1), c.knn_neighbours)
        ku, kr, (ks,) = _top_per_user(ku, kr, v, n_src, self.tiebreak, ks)
        emit(ku, kr, knn=np.log1p(ks), knn_norm=ks / _user_max(ku, ks, b)[ku], knn_rank=_rank_feature(ku, ks))
        if clock:
            clock.lap("knn")
        if fold is not None:
            fu, fr, fs = fold
            rank = np.arange(len(fu)) - np.searchsorted(fu, fu, side="left")
            emit(fu, fr, fold_score=fs, fold_rank=1.0 / (1.0 + rank), fold_hit=np.ones(len(fu)))
        n = len(self.ids)
        t = min(c.trending_candidates, n)
        if t > 0:
            top = self._best(np.arange(n), t)
            t = len(top)
            rr = np.broadcast_to(1.0 / (1.0 + np.arange(t)), (b, t))
            emit(np.repeat(np.arange(b), t), np.broadcast_to(top, (b, t)).ravel(), trend_rank=rr.ravel())
        lastcat = np.where(last[:, 0] >= 0, self.category[np.maximum(last[:, 0], 0)], -1)
        if self._members:
            crow, crr = self._category_top(lastcat, c.category_candidates)
            ok = crow >= 0
            emit(np.broadcast_to(np.arange(b)[:, None], crow.shape)[ok], crow[ok], category_rank=crr[ok])
        if clock:
            clock.lap("trending+category")

        keys = [p[0] * v + p[1] for p in parts]
        uniq, inv = np.unique(np.concatenate(keys), return_inverse=True)
        feats = np.zeros((len(uniq), _F))
        at = 0
        for k_, (_, _, fsrc) in zip(keys, parts):
            pos = inv[at : at + len(k_)]
            at += len(k_)
            for name, val in fsrc.items():
                feats[pos, _IX[name]] = val
        user, row = uniq // v, uniq % v
        # derived item and interaction features
        for name in ("sr_last_norm", "covisit_norm", "knn_norm", "fold_rank", "fold_hit", "trend_rank",
                     "category_rank"):
            np.minimum(feats[:, _IX[name]], 1.0, out=feats[:, _IX[name]])
        tmax = max(float(self.trend[:n].max(initial=0.0)), 1e-300)
        feats[:, _IX["trend"]] = np.log1p(1000.0 * self.trend[row] / tmax) / math.log(1001.0)
        cmax_all = max(float(self.count[:n].max(initial=0.0)), 1.0)
        feats[:, _IX["popularity"]] = np.log1p(self.count[row]) / math.log1p(cmax_all)
        lc = lastcat[user]
        feats[:, _IX["same_category"]] = (lc >= 0) & (self.category[row] == lc)
        now = last_t[:, 0][user]
        age = np.maximum(np.nan_to_num(now - self.last_seen[row], nan=0.0, posinf=1e18, neginf=0.0), 0.0)
        feats[:, _IX["freshness"]] = 1.0 / (1.0 + age / 3600.0)
        h = (np.log1p(hist_len) / math.log(51.0))[user]
        feats[:, _IX["sr_x_hist"]] = feats[:, _IX["sr_last_norm"]] * h
        feats[:, _IX["fold_x_hist"]] = feats[:, _IX["fold_rank"]] * h
        feats[:, _IX["covisit_x_hist"]] = feats[:, _IX["covisit_norm"]] * h
        feats[:, _IX["trend_x_hist"]] = feats[:, _IX["trend_rank"]] * h
        gap = np.where(last[:, 1] >= 0, last_t[:, 0] - last_t[:, 1], 0.0) if depth > 1 else np.zeros(b)
        new_session = (np.abs(gap) > c.session_gap_s)[user]
        feats[:, _IX["sr_x_new_session"]] = feats[:, _IX["sr_last_norm"]] * new_session
        feats[:, _IX["covisit_x_new_session"]] = feats[:, _IX["covisit_norm"]] * new_session
        np.nan_to_num(feats, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        if clock:
            clock.lap("features")
        return Candidates(user, row, feats)

    # -- ranker ----------------------------------------------------------------

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.tanh(x @ self.hw.T + self.hb)
        return x @ self.w + h @ self.hv, h

    def score(self, cand: Candidates) -> np.ndarray:
        """[N] ranker scores of the candidates (higher = better)."""
        return self._forward(cand.x)[0]

    def examples(self, cand: Candidates, target: np.ndarray) -> Examples:
        """The lists of ``cand`` that contain their target (``target[b]``: the row user b chose);
        a list without it teaches nothing."""
        pos = cand.row == target[cand.user]
        has = np.zeros(len(target), dtype=bool)
        has[cand.user[pos]] = True
        keep = has[cand.user]
        _, u = np.unique(cand.user[keep], return_inverse=True)
        return Examples(u.astype(np.int64), cand.x[keep], pos[keep], int(has.sum()))

    def learn_examples(self, ex: Examples) -> None:
        """Adagrad steps of softmax cross-entropy over the lists of ``ex``.

        The lists are also kept in a small replay buffer (``replay_lists``), and ``replay``
        earlier lists are learned again with each new one.
        """
        if ex.lists == 0:
            return
        u, x, y, n_lists = ex.list_of, ex.x, ex.positive, ex.lists
        self._step(u, x, y, n_lists)
        c = self.config
        if c.replay > 0 and c.replay_lists > 0:
            start = np.searchsorted(u, np.arange(n_lists + 1))
            for i in range(n_lists):
                self._buffer.append((x[start[i] : start[i + 1]], y[start[i] : start[i + 1]]))
            m = min(len(self._buffer), c.replay * n_lists)
            if m:
                pick = self._rng.integers(0, len(self._buffer), m)
                xs = [self._buffer[j][0] for j in pick]
                ys = [self._buffer[j][1] for j in pick]
                ru = np.repeat(np.arange(m), [len(a) for a in xs])
                self._step(ru, np.concatenate(xs), np.concatenate(ys), m)
        self.trained_lists += n_lists

    def _step(self, u: np.ndarray, x: np.ndarray, y: np.ndarray, nseg: int) -> None:
        """One step over ``nseg`` lists: candidate i belongs to list u[i]; y marks the positives."""
        s, h = self._forward(x)
        smax = np.full(nseg, -np.inf)
        np.maximum.at(smax, u, s)
        e = np.exp(s - smax[u])
        z = np.bincount(u, weights=e, minlength=nseg)
        d = (e / z[u] - y) / nseg  # dLoss/dscore
        dh = (d[:, None] * self.hv) * (1.0 - h * h)
        grads = (x.T @ d, dh.T @ x, dh.sum(axis=0), h.T @ d)
        lr = self.config.learning_rate
        for param, g, g2 in zip((self.w, self.hw, self.hb, self.hv), grads, self._g2):
            g2 *= self.config.rms_decay
            g2 += g * g
            param -= lr * g / np.sqrt(g2)

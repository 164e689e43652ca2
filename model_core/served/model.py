"""The served model: candidates from several online sources, ranked by a model learned online.

``ServedModel`` is stateless about users: callers own each user's
``UserHistory`` (the stream keeps it in a changelog-backed table) and hand a
batch of histories in. It owns the global, shared state: item factors (growing
as new items are folded in), the item index, availability, and the stream
signals (``signals``, a :class:`~model_core.served.signals.StreamSignals`): trending,
item categories, sequential rules, co-visitation and the ranker's weights.

A list is made in one batched pass (``recommend``):

1. candidates: the user's fold-in embedding through the index; the sequential
   rules and co-visits of the user's last items; the trending items of the last
   item's category; global trending;
2. per-candidate features: each source's score and rank, item trend, popularity
   and freshness, interactions with the history length and a new-session flag;
3. a linear ranker scores them; history, purchases and unavailable items are
   dropped; the top k are kept (topped up with trending when short).

``observe`` first trains the ranker — each event is the label of the list the
user was due just before it (the history without the event's item) — and then
learns the batch: item statistics, item graphs, new items' vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from model_core._blas import one_blas_thread
from model_core.als import ALSModel
from model_core.config import EventWeights, FoldInConfig
from model_core.events import Event
from model_core.foldin import FoldIn
from model_core.index import IndexConfig, ItemIndex
from model_core.served.shared import ItemDelta, user_key
from model_core.served.signals import FEATURES, Candidates, SignalsConfig, StreamSignals
from model_core.state import UserHistory

__all__ = ["SOURCES", "ServedModel", "Recommendation", "Step"]

log = logging.getLogger(__name__)

Recommendation = list[tuple[str, float]]

_NEW_ITEM_USERS = 50  # users remembered per folded-in new item
_SMALL_BATCH = 8  # up to this many users, fold-in inputs are built with plain loops
_TRAIN_BATCH_EVENTS = 256  # the ranker trains on up to train_per_batch examples per this many events


@dataclass
class Step:
    """One batch planned by ``ServedModel.plan_step``: its lists, and what it teaches."""

    lists: list[Recommendation]
    sources: list[list[tuple[str, ...]]]  # per list and item, the sources that proposed it (``SOURCES``)
    delta: ItemDelta  # what the batch teaches the item side (the ranker's examples included)


SOURCES = ("sr", "covisit", "knn", "foldin", "trending", "category")
"""Candidate sources, as named in ``Step.sources`` (and in published lists)."""
_SOURCE_FEATURES = tuple(zip(SOURCES, ("sr_rank", "covisit_rank", "knn_rank", "fold_hit", "trend_rank",
                                       "category_rank")))
_FEATURE_INDEX = {name: i for i, name in enumerate(FEATURES)}
_SOURCE_COLUMNS = np.array([_FEATURE_INDEX[f] for _, f in _SOURCE_FEATURES])
_SOURCE_BITS = 1 << np.arange(len(SOURCES))
_SOURCE_SETS = [tuple(n for j, n in enumerate(SOURCES) if m >> j & 1) for m in range(1 << len(SOURCES))]
"""Source names of each bit mask over ``SOURCES``."""


class ServedModel:
    """Multi-source candidates + online ranker for batches of users, on one model version.

    >>> rec = ServedModel(model)                       # doctest: +SKIP
    >>> rec.observe(events, histories)                       # doctest: +SKIP
    >>> rec.recommend([histories["u1"]], k=20)               # doctest: +SKIP
    [[("i42", 0.93), ...]]
    """

    def __init__(
        self,
        model: ALSModel,
        foldin: FoldInConfig | None = None,
        index: IndexConfig | None = None,
        *,
        device: str = "auto",
        trending_half_life_s: float = 86400.0,
        fold_new_items: bool = True,
        signals: SignalsConfig | None = None,
    ) -> None:
        self.model = model
        self.foldin_config = foldin or FoldInConfig()
        self._fold = FoldIn(model.item_factors, model.config, device=device)
        self.device = self._fold.device
        self._rows: dict[str, int] = {item: r for r, item in enumerate(model.item_ids)}
        self.index = ItemIndex.build(model.item_ids, model.item_factors, index or IndexConfig(), device=device)
        self._user_gram = model.user_gramian
        cfg = signals or SignalsConfig(trending_half_life_s=trending_half_life_s)
        # learned from the stream alone: a worker hands it to the next model version
        self.signals = StreamSignals(cfg, model.config.weights)
        self._rng = np.random.default_rng(0)
        self.fold_new_items = fold_new_items
        self._new_items: dict[str, dict[str, tuple[np.ndarray, float]]] = {}
        self.unavailable: set[str] = set()
        self._slot_rows = np.full(0, -1, np.int64)  # index slot -> signals row (-1 = not looked up)
        self._slot_removals = self.index.removals

    def successor(self, model: ALSModel, index: IndexConfig | None = None, *, device: str = "auto") -> ServedModel:
        """A recommender on a newer model version that carries this one's online state.

        What was learned from the stream (trending, item graphs, session kNN, the
        ranker, categories, availability) goes to the successor; the fold-in
        settings stay. Call it where batches and catalog updates run, and install
        the result there, so nothing lands on this one after the hand-over.
        """
        fresh = ServedModel(model, self.foldin_config, index or self.index.config, device=device,
                                  fold_new_items=self.fold_new_items)
        fresh.signals = self.signals
        if self.unavailable:
            fresh.set_available(self.unavailable, False)
        return fresh

    @property
    def weights(self) -> EventWeights:
        """Event-type weights of this model (what ``UserHistory.add`` needs)."""
        return self.model.config.weights

    def apply(self, history: UserHistory, event: Event, position: tuple[int, int] | None = None) -> bool:
        """Apply one event to a user's history with this model's weights and fold-in settings;
        False for an event already applied (see ``UserHistory.add``)."""
        return history.add(event, self.model.config.weights, self.foldin_config, position)

    @property
    def model_version(self) -> str:
        return self.model.version

    @property
    def index_version(self) -> int:
        return self.index.version

    @property
    def n_items(self) -> int:
        return len(self._rows)

    def knows(self, item_id: str) -> bool:
        """True when the item has a vector (trained or folded in)."""
        return item_id in self._rows

    # -- learning -------------------------------------------------------------

    def observe(self, events: Sequence[Event], histories: Mapping[str, UserHistory]) -> None:
        """Learn the global side of a batch: the ranker, trending, item graphs, new items' vectors.

        ``histories`` holds the touched users' histories *after* the events were
        applied to them.
        """
        by_user = self._by_user(events)
        pseudo, targets = self._ranker_examples(by_user, histories)
        cand = self._candidates(pseudo, [h.exclude() for h in pseudo])[0] if pseudo else None
        self.learn(self._delta(events, histories, by_user, cand, targets))

    def step(self, events: Sequence[Event], histories: Mapping[str, UserHistory], k: int = 20) -> list[Recommendation]:
        """``plan_step`` then ``learn_step``: the touched users' new lists, then the batch learned.

        ``observe`` + ``recommend`` in one candidate search: the ranker's examples (the lists
        due before the users' last events) and the users' new lists. The lists see the users'
        new events and the global state (ranker, item graphs, trending, new items' vectors) as
        of the batch before; ``observe`` + ``recommend`` would also see this batch's. That is
        one batch (tens of milliseconds) of lag for the global part, for one search instead of
        two. Vocabulary rows are handed out on first use, so a new item may get a different row
        than under ``observe``, and ties between candidates may break differently.
        """
        plan = self.plan_step(events, histories, k)
        self.learn_step(plan)
        return plan.lists

    def plan_step(self, events: Sequence[Event], histories: Mapping[str, UserHistory], k: int = 20) -> Step:
        """The batch's lists and what it teaches (``Step.delta``), learning nothing: safe to run again.

        A caller that retries a failed batch retries this; ``learn`` then learns the delta
        once (on every replica of the item side, see ``model_core.served.shared``).
        """
        clock = self.signals.clock
        if clock:
            clock.start()
        by_user = self._by_user(events)
        pseudo, targets = self._ranker_examples(by_user, histories)
        hs = list(histories.values())
        if clock:
            clock.lap("ranker examples")
        exclude = [h.exclude() for h in hs]
        cand, _ = self._candidates(pseudo + hs, [h.exclude() for h in pseudo] + exclude)
        n = len(pseudo)
        mine = cand.user >= n
        lists, sources = self._rank(Candidates(cand.user[mine] - n, cand.row[mine], cand.x[mine]), hs, exclude, k,
                                    with_sources=True)
        train = ~mine
        examples = Candidates(cand.user[train], cand.row[train], cand.x[train]) if n else None
        if clock:
            clock.start()
        delta = self._delta(events, histories, by_user, examples, targets)
        if clock:
            clock.lap("delta")
        return Step(lists, sources or [], delta)

    def learn_step(self, plan: Step) -> None:
        """Learn what ``plan_step`` planned (``learn(plan.delta)``)."""
        self.learn(plan.delta)

    @one_blas_thread()
    def learn(self, delta: ItemDelta) -> None:
        """Apply one delta to the item side: forgotten users, the ranker, item statistics, item
        graphs and sessions, new items' vectors. Replicas that apply the same deltas in the
        same order hold the same item side."""
        sig = self.signals
        if sig.clock:
            sig.clock.start()
        if delta.forget:
            self._forget(delta.forget)
        if delta.examples is not None:
            sig.learn_examples(delta.examples)
        sig.learn_items(delta.items)
        sig.learn_sequences(delta.sequences)
        if delta.new_items:
            self._learn_new_items(delta.new_items, delta.new_vectors)
        if sig.clock:
            sig.clock.lap("learn")

    def forget_users(self, user_ids: Iterable[str]) -> ItemDelta:
        """Erase: drop everything this model keeps under the users' keys (their session-kNN
        sessions, their contributions to new items' vectors). Item-side statistics they fed
        (counts, item graphs) are not per user and stay. Returns the delta that makes every
        other replica forget them too."""
        delta = ItemDelta(forget=sorted({user_key(u) for u in user_ids}))
        self._forget(delta.forget)
        return delta

    def _forget(self, keys: Iterable[str]) -> None:
        gone = set(keys)
        for key in gone:
            self.signals.sessions.forget(key)
        for seen in self._new_items.values():
            for key in gone.intersection(seen):
                del seen[key]

    @staticmethod
    def _by_user(events: Sequence[Event]) -> dict[str, list[Event]]:
        by_user: dict[str, list[Event]] = {}
        for ev in events:
            by_user.setdefault(ev.user_id, []).append(ev)
        return by_user

    def _delta(self, events: Sequence[Event], histories: Mapping[str, UserHistory],
               by_user: Mapping[str, list[Event]], examples: Candidates | None, targets: list[str]) -> ItemDelta:
        """What the batch teaches the item side (``model_core.served.shared``), learning nothing."""
        sig = self.signals
        weights = self.model.config.weights
        # learn_sequences reads at most this many of the newest earlier items (rules, session chain)
        depth = max(sig.config.sr_steps, sig.config.knn_session_len)
        seqs = []
        for user, evs in by_user.items():
            h = histories.get(user)
            if h is None:
                continue
            touched = {ev.item_id for ev in evs}
            prev = list(islice(((i, e[1]) for i, e in reversed(h.entries.items()) if i not in touched), depth))
            prev.reverse()
            seqs.append((user_key(user), prev, [(ev.item_id, weights.of(ev), ev.time) for ev in evs]))
        new_items, vectors = self._new_item_contributions(events, histories)
        ex = sig.examples(examples, sig.rows_of(targets)) if examples is not None else None
        return ItemDelta([(ev.item_id, weights.of(ev), ev.time, ev.category) for ev in events], seqs,
                         new_items, vectors, ex)

    def _ranker_examples(self, by_user: Mapping[str, list[Event]],
                         histories: Mapping[str, UserHistory]) -> tuple[list[UserHistory], list[str]]:
        """(the history before, the item chosen) for each user whose last event of the batch
        labels the list due before it: at most ``train_per_batch`` per started 256 events (a
        backlog's larger batches train the ranker as often per event as batches of 256)."""
        chosen: list[tuple[str, Event]] = []
        weights = self.model.config.weights
        for user, evs in by_user.items():
            h = histories.get(user)
            ev = evs[-1]
            if h is None or len(h.entries) < 2 or next(reversed(h.entries)) != ev.item_id:
                continue
            w, t = h.entries[ev.item_id]
            if t != ev.time or abs(w - weights.of(ev)) > 1e-9 * max(1.0, w):
                continue  # not the item's first event for this user: nothing new to predict
            chosen.append((user, ev))
        n_events = sum(len(evs) for evs in by_user.values())
        cap = self.signals.config.train_per_batch * max(1, -(-n_events // _TRAIN_BATCH_EVENTS))
        if len(chosen) > cap:
            chosen = [chosen[i] for i in self._rng.choice(len(chosen), cap, replace=False)]
        pseudo: list[UserHistory] = []
        for user, ev in chosen:
            h = histories[user]
            entries = {i: e for i, e in h.entries.items() if i != ev.item_id}
            pseudo.append(UserHistory(user, entries, [p for p in h.purchased if p != ev.item_id],
                                      last_event_time=max(e[1] for e in entries.values())))
        return pseudo, [ev.item_id for _, ev in chosen]

    def _new_item_contributions(self, events: Sequence[Event], histories: Mapping[str, UserHistory]
                                ) -> tuple[list[tuple[str, str, float]], np.ndarray]:
        """(item, user key, weight) and the user's embedding, for each user of the batch who
        touched an item with no trained vector."""
        k = self._fold.factors
        if not self.fold_new_items:
            return [], np.zeros((0, k), np.float32)
        touched: dict[str, set[str]] = {}
        for ev in events:
            if ev.item_id not in self._rows or ev.item_id in self._new_items:
                touched.setdefault(ev.item_id, set()).add(ev.user_id)
        if not touched:
            return [], np.zeros((0, k), np.float32)
        users = sorted({u for us in touched.values() for u in us if u in histories})
        vecs = self.embed([histories[u] for u in users])
        pos = {u: i for i, u in enumerate(users)}
        out: list[tuple[str, str, float]] = []
        rows: list[int] = []
        for item, us in touched.items():
            for u in sorted(us):
                entry = histories[u].entries.get(item) if u in pos else None
                if entry is not None and np.any(vecs[pos[u]]):
                    out.append((item, user_key(u), entry[0]))
                    rows.append(pos[u])
        return out, np.asarray(vecs[rows], np.float32).reshape(len(rows), k)

    def _learn_new_items(self, contributions: list[tuple[str, str, float]], vectors: np.ndarray) -> None:
        """New items' vectors from their users' contributions (the newest ``_NEW_ITEM_USERS`` per
        item). An item this model trained a vector for keeps it."""
        changed: dict[str, None] = {}
        for (item, key, weight), vec in zip(contributions, vectors):
            if item in self._rows and item not in self._new_items:
                continue
            seen = self._new_items.setdefault(item, {})
            seen.pop(key, None)
            seen[key] = (vec, weight)
            while len(seen) > _NEW_ITEM_USERS:
                del seen[next(iter(seen))]
            changed[item] = None
        self._fold_items(list(changed))

    def _fold_items(self, items: list[str]) -> None:
        if not items:
            return
        h = max(len(self._new_items[i]) for i in items)
        k = self._fold.factors
        f = np.zeros((len(items), h, k), dtype=np.float32)
        w = np.zeros((len(items), h), dtype=np.float32)
        for b, item in enumerate(items):
            for j, (vec, weight) in enumerate(self._new_items[item].values()):
                f[b, j] = vec
                w[b, j] = weight
        vectors = self._fold.items(f, w, self._user_gram)
        for item, vec in zip(items, vectors):
            row = self._rows.get(item)
            if row is None:
                self._rows[item] = self._fold.add_item(vec)
            else:
                self._fold.replace_item(row, vec)
        self.index.upsert(items, vectors)
        if self.unavailable.intersection(items):
            self.index.set_available(self.unavailable.intersection(items), False)

    def set_category(self, item_ids: Iterable[str], categories: Iterable[str | None]) -> None:
        """Catalog update: the items' categories (None = unknown), for category trending."""
        self.signals.set_category(item_ids, categories)

    def set_available(self, item_ids: Iterable[str], available: bool) -> None:
        """Catalog update: unavailable items leave every later list until available again."""
        ids = list(item_ids)
        self.signals.set_available(ids, available)
        if available:
            self.unavailable.difference_update(ids)
        else:
            self.unavailable.update(ids)
        known = [i for i in ids if i in self.index]
        if known:
            self.index.set_available(known, available)

    # -- serving --------------------------------------------------------------

    def _padded(self, histories: Sequence[UserHistory]) -> tuple[np.ndarray, np.ndarray]:
        """Item rows [B, H] (-1 = padding, known items packed left) and decayed weights [B, H].

        The same weights as ``UserHistory.weighted_items`` (newest first; decayed to
        the user's newest event and by recency rank), computed for the whole batch
        at once.
        """
        cfg = self.foldin_config
        b = len(histories)
        if b <= _SMALL_BATCH:
            return self._padded_small(histories)
        lens = np.fromiter((len(h.entries) for h in histories), np.int64, b)
        total = int(lens.sum())
        if total == 0:
            return np.full((b, 1), -1, dtype=np.int64), np.zeros((b, 1), dtype=np.float32)
        get = self._rows.get
        item_rows = np.fromiter((get(i, -1) for h in histories for i in reversed(h.entries)), np.int64, total)
        wt = np.fromiter((x for h in histories for e in reversed(h.entries.values()) for x in e),
                         np.float64, 2 * total).reshape(total, 2)
        user = np.repeat(np.arange(b), lens)
        first = np.cumsum(lens) - lens
        rank = np.arange(total) - first[user]
        weight = wt[:, 0] * cfg.position_decay ** rank
        if cfg.half_life_s > 0:
            now = np.fromiter((h.last_event_time or 0.0 for h in histories), np.float64, b)[user]
            weight *= 0.5 ** (np.maximum(now - wt[:, 1], 0.0) / cfg.half_life_s)
        known = item_rows >= 0
        seen = np.cumsum(known)  # known items up to each entry, over the whole batch
        before = np.concatenate(([0], seen))[first]  # known items of earlier users
        pos = seen - 1 - np.repeat(before, lens)
        width = max(1, int(np.bincount(user[known], minlength=b).max()) if known.any() else 1)
        rows = np.full((b, width), -1, dtype=np.int64)
        weights = np.zeros((b, width), dtype=np.float32)
        rows[user[known], pos[known]] = item_rows[known]
        weights[user[known], pos[known]] = weight[known]
        return rows, weights

    def _padded_small(self, histories: Sequence[UserHistory]) -> tuple[np.ndarray, np.ndarray]:
        """``_padded`` for a few users: plain loops beat numpy's per-call overhead."""
        per_user = []
        for h in histories:
            items, ws = h.weighted_items(self.foldin_config)
            per_user.append([(r, w) for i, w in zip(items, ws) if (r := self._rows.get(i)) is not None])
        width = max([1] + [len(p) for p in per_user])
        rows = np.full((len(histories), width), -1, dtype=np.int64)
        weights = np.zeros((len(histories), width), dtype=np.float32)
        for b, pairs in enumerate(per_user):
            if pairs:
                rows[b, : len(pairs)], weights[b, : len(pairs)] = zip(*pairs)
        return rows, weights

    def warm_up(self, k: int = 20) -> None:
        """Fold in and search once for a made-up user, keeping nothing, so that one-time costs
        (the first torch and BLAS calls, the search layout) are paid before the first batch
        rather than in it."""
        if self.model.item_ids:
            user = UserHistory("", {self.model.item_ids[0]: [1.0, 0.0]}, [], last_event_time=0.0)
            self.index.search_flat(self.embed([user]), k)

    def embed(self, histories: Sequence[UserHistory]) -> np.ndarray:
        """[B, k] embeddings of a batch of users (zeros where no item has a vector)."""
        if not histories:
            return np.zeros((0, self._fold.factors), dtype=np.float32)
        rows, weights = self._padded(histories)
        return self._fold.users(rows, weights)

    @one_blas_thread()
    def _candidates(
        self, histories: Sequence[UserHistory], exclude: Sequence[Collection[str]]
    ) -> tuple[Candidates, np.ndarray]:
        """Every source's candidates for the batch, with features; and the [B, L] last-item rows."""
        sig = self.signals
        clock = sig.clock
        if clock:
            clock.start()
        depth = sig.config.context
        b = len(histories)
        hist_len = np.fromiter((len(h.entries) for h in histories), np.float64, b)
        lens = np.minimum(hist_len, depth).astype(np.int64)
        newest = [(item, e[1]) for h in histories for item, e in islice(reversed(h.entries.items()), depth)]
        who = np.repeat(np.arange(b), lens)
        col = np.arange(len(who)) - (np.cumsum(lens) - lens)[who]
        last = np.full((b, depth), -1, dtype=np.int64)
        last_t = np.zeros((b, depth))
        last[who, col] = sig.rows_of([i for i, _ in newest])  # rows handed out in order, as row() does
        last_t[who, col] = [t for _, t in newest]
        own = np.fromiter((sig.sessions.own_slot(user_key(h.user_id)) for h in histories), np.int64, b)
        if clock:
            clock.lap("prepare")
        fold = None
        vecs = self.embed(histories)
        if clock:
            clock.lap("fold-in")
        warm = np.flatnonzero(np.any(vecs != 0, axis=1))
        if len(warm):
            lens, slots, score = self.index.search_slots(vecs[warm], sig.config.fold_candidates,
                                                         [exclude[w] for w in warm.tolist()])
            fold = (np.repeat(warm, lens), self._signal_rows(slots), score.astype(np.float64))
        if clock:
            clock.lap("search")
        return sig.candidates(last, last_t, hist_len, fold, own), last

    def _signal_rows(self, slots: np.ndarray) -> np.ndarray:
        """The signals' vocabulary rows of index slots, remembered per slot (new items get rows
        in order, as ``rows_of`` hands them out)."""
        if self._slot_removals != self.index.removals:  # slots freed: they may name other items
            self._slot_rows = np.full(0, -1, np.int64)
            self._slot_removals = self.index.removals
        if len(slots) and slots.max() >= len(self._slot_rows):
            grown = np.full(max(int(slots.max()) + 1, 2 * len(self._slot_rows)), -1, np.int64)
            grown[: len(self._slot_rows)] = self._slot_rows
            self._slot_rows = grown
        rows = self._slot_rows[slots]
        miss = np.flatnonzero(rows < 0)
        if len(miss):
            rows[miss] = self.signals.rows_of(self.index.ids_of_slots(slots[miss]))
            self._slot_rows[slots[miss]] = rows[miss]
        return rows

    def recommend(
        self,
        histories: Sequence[UserHistory],
        k: int = 20,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> list[Recommendation]:
        """Top-k (item_id, score) per user, best first.

        ``exclude[b]`` defaults to the user's history and purchases; unavailable
        items are never returned. A list shorter than k (a cold start) is topped up
        with trending items.
        """
        if not histories:
            return []
        if exclude is None:
            exclude = [h.exclude() for h in histories]
        cand, _ = self._candidates(histories, exclude)
        return self._rank(cand, histories, exclude, k)[0]

    @one_blas_thread()
    def _rank(self, cand: Candidates, histories: Sequence[UserHistory], exclude: Sequence[Collection[str]],
              k: int, *, with_sources: bool = False
              ) -> tuple[list[Recommendation], list[list[tuple[str, ...]]] | None]:
        """Score and cut each user's candidates; top up short lists with trending items.

        With ``with_sources``, also per user and item the candidate sources that proposed the
        item (``SOURCES`` names; a top-up item is ``("trending",)``); else None.
        """
        sig = self.signals
        if sig.clock:
            sig.clock.start()
        v = max(1, len(sig.ids))
        get = sig.rows.get
        banned = np.fromiter(
            (b * v + r for b, ex in enumerate(exclude) for i in ex if (r := get(i)) is not None), np.int64
        )
        keep = ~sig.unavailable[cand.row] & ~np.isin(cand.user * v + cand.row, banned)
        user, row = cand.user[keep], cand.row[keep]
        score = sig.score(cand)[keep]
        order = np.lexsort((sig.tiebreak[row], -score, user))
        user, row, score = user[order], row[order], score[order]
        start = np.searchsorted(user, user, side="left")
        top = (np.arange(len(user)) - start) < k
        ids = sig.ids
        pairs = list(zip([ids[r] for r in row[top].tolist()], score[top].tolist()))
        cut = np.searchsorted(user[top], np.arange(len(histories) + 1)).tolist()  # users in order
        out: list[Recommendation] = [pairs[a:z] for a, z in zip(cut[:-1], cut[1:])]
        sources: list[list[tuple[str, ...]]] | None = None
        if with_sources:
            picked = np.flatnonzero(keep)[order[top]]
            mask = (cand.x[picked][:, _SOURCE_COLUMNS] > 0) @ _SOURCE_BITS  # one bit per source
            names = [_SOURCE_SETS[m] for m in mask.tolist()]
            sources = [names[a:z] for a, z in zip(cut[:-1], cut[1:])]
        for b, lst in enumerate(out):
            if len(lst) < k:
                have = set(exclude[b]).union(i for i, _ in lst).union(self.unavailable)
                extra = sig.top(k - len(lst), have)
                lst.extend(extra)
                if sources is not None:
                    sources[b].extend(("trending",) for _ in extra)
        if sig.clock:
            sig.clock.lap("rank")
        return out, sources

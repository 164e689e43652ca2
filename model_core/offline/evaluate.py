"""Prequential (test-then-learn) evaluation of the served model against baselines.

Events are sorted by event time and split at ``train_fraction``. Every model
trains on the events before the split; then the rest is streamed in order.
For every event whose user has at least one earlier event and whose item is new
to that user, each model is first asked for the user's top-K (excluding items
the user already interacted with) and scored (HR@K, NDCG@K, MRR@K); then every
model learns the event.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from model_core.als import ALSModel, train_als
from model_core.baselines import CoVisitation, Popular, Trending
from model_core.config import ALSConfig, FoldInConfig
from model_core.errors import BadInputError, ConfigError
from model_core.events import Event, EventType
from model_core.index import IndexConfig, ItemIndex
from model_core.online import OnlineRecommender
from model_core.state import UserHistory

__all__ = ["PrequentialModel", "MODELS", "prequential", "hit_rank"]

log = logging.getLogger(__name__)


class PrequentialModel(Protocol):
    """What the evaluation loop needs of a model."""

    def recommend(self, user_id: str, k: int, exclude: set[str]) -> list[str]: ...

    def learn(self, event: Event) -> None: ...


@dataclass
class _Context:
    train: Sequence[Event]
    model: ALSModel
    foldin: FoldInConfig
    device: str
    popular: Popular = field(init=False)

    def __post_init__(self) -> None:
        self.popular = Popular(self.model.config.weights)
        self.popular.fit(self.train)


class IncrementalModel:
    """The model the streaming worker serves: fold-in of decayed history + FAISS + trending."""

    def __init__(self, ctx: _Context) -> None:
        self.rec = OnlineRecommender(ctx.model, ctx.foldin, device=ctx.device)
        self.weights = ctx.model.config.weights
        self.foldin = ctx.foldin
        self.histories: dict[str, UserHistory] = {}
        self.rec.trending.learn(ctx.train)
        for ev in ctx.train:
            self._history(ev.user_id).add(ev, self.weights, self.foldin)

    def _history(self, user: str) -> UserHistory:
        h = self.histories.get(user)
        if h is None:
            h = self.histories[user] = UserHistory(user)
        return h

    def recommend(self, user_id: str, k: int, exclude: set[str]) -> list[str]:
        [lst] = self.rec.recommend([self._history(user_id)], k, [exclude])
        return [i for i, _ in lst]

    def learn(self, event: Event) -> None:
        h = self._history(event.user_id)
        h.add(event, self.weights, self.foldin)
        self.rec.observe([event], {event.user_id: h})


class StaticModel:
    """MF with user vectors frozen at the split; unknown users get popular items."""

    def __init__(self, ctx: _Context) -> None:
        m = ctx.model
        self.users = {u: r for r, u in enumerate(m.user_ids)}
        self.vectors = m.user_factors
        self.index = ItemIndex.build(m.item_ids, m.item_factors, IndexConfig(), device=ctx.device)
        self.popular = ctx.popular

    def recommend(self, user_id: str, k: int, exclude: set[str]) -> list[str]:
        r = self.users.get(user_id)
        if r is None:
            return [i for i, _ in self.popular.top(k, exclude)]
        [lst] = self.index.search(self.vectors[r : r + 1], k, [exclude])
        return [i for i, _ in lst]

    def learn(self, event: Event) -> None:
        pass


class PopularModel:
    def __init__(self, ctx: _Context) -> None:
        self.popular = ctx.popular

    def recommend(self, user_id: str, k: int, exclude: set[str]) -> list[str]:
        return [i for i, _ in self.popular.top(k, exclude)]

    def learn(self, event: Event) -> None:
        pass


class TrendingModel:
    def __init__(self, ctx: _Context) -> None:
        self.trending = Trending(weights=ctx.model.config.weights)
        self.trending.learn(ctx.train)

    def recommend(self, user_id: str, k: int, exclude: set[str]) -> list[str]:
        return [i for i, _ in self.trending.top(k, exclude)]

    def learn(self, event: Event) -> None:
        self.trending.learn((event,))


class CoVisitModel:
    def __init__(self, ctx: _Context) -> None:
        self.covisit = CoVisitation(weights=ctx.model.config.weights)
        self.covisit.learn(ctx.train)

    def recommend(self, user_id: str, k: int, exclude: set[str]) -> list[str]:
        return [i for i, _ in self.covisit.recommend(user_id, k, exclude)]

    def learn(self, event: Event) -> None:
        self.covisit.learn((event,))


class ImplicitModel:
    """benfred/implicit's ALS, same data and hyper-parameters, ``recalculate_user=True``.

    Each user's whole history so far (no decay, no bound) is handed to
    ``recommend``, which recomputes the user's factors from it.
    """

    def __init__(self, ctx: _Context) -> None:
        try:
            import scipy.sparse as sp
            from implicit.cpu.als import AlternatingLeastSquares
        except ImportError:
            raise ConfigError("model 'implicit' needs the packages implicit and scipy (pip install implicit)") from None
        self._sp = sp
        cfg = ctx.model.config
        self.items = {i: r for r, i in enumerate(ctx.model.item_ids)}
        self.names = list(ctx.model.item_ids)
        self.weights = cfg.weights
        self.cells: dict[str, dict[int, float]] = {}
        for ev in ctx.train:
            self._add(ev)
        users = list(self.cells)
        rows = [r for r, u in enumerate(users) for _ in self.cells[u]]
        cols = [c for u in users for c in self.cells[u]]
        data = [self._conf(w, cfg) for u in users for w in self.cells[u].values()]
        matrix = sp.csr_matrix((np.asarray(data, np.float32), (rows, cols)), shape=(len(users), len(self.items)))
        # implicit uses confidence = alpha * data; we hand it c = 1 + alpha*w with alpha=1.
        self.als = AlternatingLeastSquares(
            factors=cfg.factors, regularization=cfg.regularization, alpha=1.0,
            iterations=cfg.iterations, random_state=cfg.seed, num_threads=1,
        )
        self.als.fit(matrix, show_progress=False)
        self.cfg = cfg
        self.popular = ctx.popular

    @staticmethod
    def _conf(w: float, cfg: ALSConfig) -> float:
        return 1.0 + cfg.alpha * (math.log1p(w / cfg.epsilon) if cfg.confidence == "log" else w)

    def _add(self, ev: Event) -> None:
        r = self.items.get(ev.item_id)
        if r is not None:
            cell = self.cells.setdefault(ev.user_id, {})
            cell[r] = cell.get(r, 0.0) + self.weights.of(ev)

    def recommend(self, user_id: str, k: int, exclude: set[str]) -> list[str]:
        cell = self.cells.get(user_id)
        if not cell:
            return [i for i, _ in self.popular.top(k, exclude)]
        cols = np.fromiter(cell.keys(), dtype=np.int32)
        data = np.asarray([self._conf(w, self.cfg) for w in cell.values()], dtype=np.float32)
        row = self._sp.csr_matrix((data, (np.zeros_like(cols), cols)), shape=(1, len(self.items)))
        banned = np.fromiter((self.items[i] for i in exclude if i in self.items), dtype=np.int64)
        ids, _ = self.als.recommend(
            0, row, N=k, recalculate_user=True, filter_already_liked_items=False, filter_items=banned
        )
        return [self.names[i] for i in ids if i >= 0]

    def learn(self, event: Event) -> None:
        self._add(event)


MODELS: dict[str, Callable[[_Context], PrequentialModel]] = {
    "incremental": IncrementalModel,
    "static": StaticModel,
    "popular": PopularModel,
    "trending": TrendingModel,
    "covisit": CoVisitModel,
    "implicit": ImplicitModel,
}
DEFAULT_MODELS = ("incremental", "static", "popular", "trending", "covisit")


def hit_rank(ranked: Sequence[str], target: str) -> int | None:
    """0-based rank of ``target`` in ``ranked``, or None when absent."""
    for r, item in enumerate(ranked):
        if item == target:
            return r
    return None


@dataclass
class _Score:
    points: int = 0
    hits: int = 0
    ndcg: float = 0.0
    rr: float = 0.0
    p_points: int = 0
    p_hits: int = 0
    p_ndcg: float = 0.0
    seconds: float = 0.0

    def add(self, rank: int | None, purchase: bool) -> None:
        self.points += 1
        self.p_points += purchase
        if rank is not None:
            gain = 1.0 / math.log2(rank + 2)
            self.hits += 1
            self.ndcg += gain
            self.rr += 1.0 / (rank + 1)
            if purchase:
                self.p_hits += 1
                self.p_ndcg += gain

    def report(self, n_events: int) -> dict[str, float | None]:
        def ratio(a: float, b: int) -> float | None:
            return round(a / b, 6) if b else None

        return {
            "hr": ratio(self.hits, self.points),
            "ndcg": ratio(self.ndcg, self.points),
            "mrr": ratio(self.rr, self.points),
            "purchase_hr": ratio(self.p_hits, self.p_points),
            "purchase_ndcg": ratio(self.p_ndcg, self.p_points),
            "events_per_s": round(n_events / self.seconds, 1) if self.seconds > 0 else None,
        }


def _score_stream(
    train: Sequence[Event],
    test: Sequence[Event],
    models: dict[str, PrequentialModel],
    scores: dict[str, _Score],
    k: int,
    progress: bool = False,
) -> None:
    """The test-then-learn loop over ``test`` (``train`` only seeds who saw what)."""
    from tqdm import tqdm

    seen: dict[str, set[str]] = {}
    for ev in train:
        seen.setdefault(ev.user_id, set()).add(ev.item_id)
    for ev in tqdm(test, desc="prequential", unit="ev", disable=not progress, mininterval=1.0):
        s = seen.get(ev.user_id)
        if s and ev.item_id not in s:
            purchase = ev.type is EventType.PURCHASE
            for name, m in models.items():
                t = time.perf_counter()
                ranked = m.recommend(ev.user_id, k, s)
                scores[name].seconds += time.perf_counter() - t
                scores[name].add(hit_rank(ranked[:k], ev.item_id), purchase)
        for name, m in models.items():
            t = time.perf_counter()
            m.learn(ev)
            scores[name].seconds += time.perf_counter() - t
        if s is None:
            seen[ev.user_id] = {ev.item_id}
        else:
            s.add(ev.item_id)


def prequential(
    events: Iterable[Event],
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    k: int = 20,
    train_fraction: float = 0.5,
    als: ALSConfig | None = None,
    foldin: FoldInConfig | None = None,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Run the test-then-learn protocol; returns the JSON-ready report."""
    if k < 1:
        raise ConfigError(f"k={k} must be >= 1")
    if not 0 < train_fraction < 1:
        raise ConfigError(f"train_fraction={train_fraction} must be between 0 and 1")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    ordered = sorted(events, key=lambda e: e.time)
    split = int(len(ordered) * train_fraction)
    train, test = ordered[:split], ordered[split:]
    if not train or not test:
        raise BadInputError(f"{len(ordered)} events are too few to split at {train_fraction}")

    t0 = time.perf_counter()
    model = train_als(train, als, device=device, progress=progress)
    train_s = time.perf_counter() - t0
    ctx = _Context(train, model, foldin or FoldInConfig(), device)
    built: dict[str, PrequentialModel] = {}
    for name in models:
        t = time.perf_counter()
        built[name] = MODELS[name](ctx)
        log.info("model %s ready in %.1fs", name, time.perf_counter() - t)
    scores = {name: _Score() for name in built}

    _score_stream(train, test, built, scores, k, progress)

    any_score = next(iter(scores.values()))
    report: dict[str, Any] = {
        "k": k,
        "train_fraction": train_fraction,
        "train_events": len(train),
        "test_events": len(test),
        "eval_points": any_score.points,
        "purchase_eval_points": any_score.p_points,
        "model_version": model.version,
        "train_seconds": round(train_s, 2),
        "models": {name: sc.report(len(test)) for name, sc in scores.items()},
    }
    if "incremental" in scores:
        inc = report["models"]["incremental"]
        report["incremental_vs"] = {
            name: {
                metric: (round(inc[metric] / r[metric] - 1.0, 4) if r[metric] else None)
                for metric in ("hr", "ndcg")
            }
            for name, r in report["models"].items()
            if name != "incremental"
        }
    return report

"""Prequential (test-then-learn) evaluation of the served model against baselines.

Events are sorted by event time and split at ``train_fraction``. Every model
trains on the events before the split; then the rest is streamed in order.
Every event whose user has at least one earlier event and whose item is new to
that user is scored (HR@K, NDCG@K, MRR@K) against the top-K the model last
published for that user (excluding the items the user had touched by then), the
way freshrec serves lists; then the models learn it.

The served model (``served``) is replayed as deployed (``fleet.ServedFleet``:
the worker's micro-batches, ``apply``, ``plan_step`` and the batch's delta learned by
the one item side every worker shares, users split over ``Deployment.workers``, a
restart that restores the item side from a snapshot). A baseline learns each moment (the events within
the worker's batch window) and then publishes the lists of that moment's users.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_core.als import ALSModel, train_als
from model_core.baselines import CoVisitation, Popular, SequentialRules, SessionKNN, Trending
from model_core.config import ALSConfig, FoldInConfig
from model_core.errors import BadInputError, ConfigError
from model_core.events import Event, EventType
from model_core.index import IndexConfig, ItemIndex
from model_core.offline.fleet import Deployment, ServedFleet
from model_core.reco import BaseRecommender, Ranked
from model_core.served.model import ServedModel
from model_core.state import UserHistory

__all__ = ["GATE_Z", "MODELS", "FactorsOnly", "compare_on_holdout", "hit_rank", "paired_z", "prequential"]

log = logging.getLogger(__name__)


@dataclass
class _Context:
    train: Sequence[Event]
    model: ALSModel
    foldin: FoldInConfig
    device: str
    deployment: Deployment = field(default_factory=Deployment)
    k: int = 20
    popular: Popular = field(init=False)

    def __post_init__(self) -> None:
        self.popular = Popular(self.model.config.weights)
        self.popular.fit(self.train)


def _served(ctx: _Context) -> ServedFleet:
    """The served model's workers after they consumed the training events as they happened."""
    fleet = ServedFleet(lambda: ServedModel(ctx.model, ctx.foldin, device=ctx.device), ctx.deployment, ctx.k)
    fleet.arrive(ctx.train)
    fleet.flush()
    return fleet


class StaticModel(BaseRecommender):
    """MF with user vectors frozen at the split; unknown users get popular items."""

    def __init__(self, ctx: _Context) -> None:
        m = ctx.model
        self.users = {u: r for r, u in enumerate(m.user_ids)}
        self.vectors = m.user_factors
        self.index = ItemIndex.build(m.item_ids, m.item_factors, IndexConfig(), device=ctx.device)
        self.popular = ctx.popular

    def fit(self, events: Sequence[Event]) -> None:
        pass  # trained with the ALS model

    def learn(self, events: Sequence[Event]) -> None:
        pass

    def recommend(
        self, users: Sequence[str], k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[Ranked]:
        ex = exclude if exclude is not None else [()] * len(users)
        out: list[Ranked] = []
        for u, e in zip(users, ex):
            r = self.users.get(u)
            if r is None:
                out.append(self.popular.top(k, e))
            else:
                out += self.index.search(self.vectors[r : r + 1], k, [e])
        return out


def _popular(ctx: _Context) -> BaseRecommender:
    return ctx.popular


def _fitted(cls: Callable[..., BaseRecommender]) -> Callable[[_Context], BaseRecommender]:
    def make(ctx: _Context) -> BaseRecommender:
        m = cls(weights=ctx.model.config.weights)
        m.fit(ctx.train)
        return m

    return make


class ImplicitModel(BaseRecommender):
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

    def fit(self, events: Sequence[Event]) -> None:
        pass  # fitted on the training events in __init__

    def learn(self, events: Sequence[Event]) -> None:
        for ev in events:
            self._add(ev)

    def recommend(
        self, users: Sequence[str], k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[Ranked]:
        ex = exclude if exclude is not None else [()] * len(users)
        return [self._one(u, k, e) for u, e in zip(users, ex)]

    def _one(self, user_id: str, k: int, exclude: Collection[str]) -> Ranked:
        cell = self.cells.get(user_id)
        if not cell:
            return self.popular.top(k, exclude)
        cols = np.fromiter(cell.keys(), dtype=np.int32)
        data = np.asarray([self._conf(w, self.cfg) for w in cell.values()], dtype=np.float32)
        row = self._sp.csr_matrix((data, (np.zeros_like(cols), cols)), shape=(1, len(self.items)))
        banned = np.fromiter((self.items[i] for i in exclude if i in self.items), dtype=np.int64)
        ids, scores = self.als.recommend(
            0, row, N=k, recalculate_user=True, filter_already_liked_items=False, filter_items=banned
        )
        return [(self.names[i], float(s)) for i, s in zip(ids, scores) if i >= 0]


MODELS: dict[str, Callable[[_Context], BaseRecommender | ServedFleet]] = {
    "served": _served,
    "static": StaticModel,
    "popular": _popular,
    "trending": _fitted(Trending),
    "covisit": _fitted(CoVisitation),
    "sr": _fitted(SequentialRules),
    "vsknn": _fitted(SessionKNN),
    "implicit": ImplicitModel,
}
ALIASES = {"incremental": "served"}
"""Names a model was known by before; ``prequential`` accepts them (scripts use them)."""
DEFAULT_MODELS = ("served", "static", "popular", "trending", "covisit", "sr", "vsknn")


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
    exposure: dict[str, int] = field(default_factory=dict)  # item -> lists it appeared in
    per_point: list[bool] | None = None  # hit or not per point, when a paired comparison needs them

    def add(self, rank: int | None, purchase: bool, ranked: Sequence[str] = ()) -> None:
        self.points += 1
        if self.per_point is not None:
            self.per_point.append(rank is not None)
        self.p_points += purchase
        exp = self.exposure
        for item in ranked:
            exp[item] = exp.get(item, 0) + 1
        if rank is not None:
            gain = 1.0 / math.log2(rank + 2)
            self.hits += 1
            self.ndcg += gain
            self.rr += 1.0 / (rank + 1)
            if purchase:
                self.p_hits += 1
                self.p_ndcg += gain

    def report(self, n_events: int, catalog: _Catalog | None = None) -> dict[str, float | None]:
        def ratio(a: float, b: int) -> float | None:
            return round(a / b, 6) if b else None

        out: dict[str, float | None] = {
            "hr": ratio(self.hits, self.points),
            "ndcg": ratio(self.ndcg, self.points),
            "mrr": ratio(self.rr, self.points),
            "purchase_hr": ratio(self.p_hits, self.p_points),
            "purchase_ndcg": ratio(self.p_ndcg, self.p_points),
            "events_per_s": round(n_events / self.seconds, 1) if self.seconds > 0 else None,
        }
        if catalog is not None:
            out.update(catalog.beyond_accuracy(self.exposure))
        return out


@dataclass
class _Catalog:
    """Every item of the log, and its popularity percentile in the training events."""

    items: list[str]
    percentile: dict[str, float]

    @classmethod
    def of(cls, train: Sequence[Event], test: Sequence[Event]) -> _Catalog:
        counts: dict[str, int] = {}
        for ev in train:
            counts[ev.item_id] = counts.get(ev.item_id, 0) + 1
        items = list(dict.fromkeys([*counts, *(ev.item_id for ev in test)]))
        c = np.array([counts.get(i, 0) for i in items], dtype=np.float64)
        # percentile = share of catalog items strictly less popular (1.0 = the most popular item)
        pct = np.searchsorted(np.sort(c), c, side="left") / max(1, len(items) - 1)
        return cls(items, dict(zip(items, np.minimum(pct, 1.0).tolist())))

    def beyond_accuracy(self, exposure: dict[str, int]) -> dict[str, float | None]:
        """coverage@K, exposure Gini and mean popularity percentile of everything recommended."""
        if not exposure:
            return {"coverage": None, "gini": None, "pop_percentile": None}
        n = len(self.items)
        counts = np.zeros(max(n, 1), dtype=np.float64)
        covered = [exposure.get(i, 0) for i in self.items]
        counts[: len(covered)] = covered
        x = np.sort(counts)
        total = x.sum()
        gini = float(((2 * np.arange(1, len(x) + 1) - len(x) - 1) * x).sum() / (len(x) * total)) if total else 0.0
        pct = self.percentile
        pop = sum(pct.get(i, 0.0) * c for i, c in exposure.items()) / sum(exposure.values())
        return {
            "coverage": round(sum(1 for c in covered if c) / max(n, 1), 6),
            "gini": round(gini, 6),
            "pop_percentile": round(pop, 6),
        }


def _score_stream(
    train: Sequence[Event],
    test: Sequence[Event],
    models: Mapping[str, BaseRecommender | ServedFleet],
    scores: dict[str, _Score],
    k: int,
    progress: bool = False,
    restart_at: float | None = None,
    window_s: float = 0.0,
) -> None:
    """The test-then-learn loop over ``test`` (``train`` only seeds who saw what).

    Every model is scored the way freshrec serves lists: an event meets the list its user
    was last published. A fleet publishes as the worker does (``ServedFleet``). A baseline
    publishes a user's list when a moment with the user's events is over (the events within
    ``window_s`` of the moment's first, the worker's batch window), after learning the
    moment; users known at the split get theirs at the split. So the items of one order
    (same time) all meet the list from before the order, and a user who comes back meets
    the list of their last visit, for every model alike.
    ``restart_at``: the fleets restart (``ServedFleet.restart``) at that fraction of ``test``.
    """
    from tqdm import tqdm

    seen: dict[str, set[str]] = {}
    for ev in train:
        seen.setdefault(ev.user_id, set()).add(ev.item_id)
    baselines = {name: m for name, m in models.items() if not isinstance(m, ServedFleet)}
    fleets = {name: m for name, m in models.items() if isinstance(m, ServedFleet)}
    published: dict[str, dict[str, list[str]]] = {name: {} for name in baselines}
    moment: list[Event] = []

    def publish(users: Sequence[str]) -> None:
        for name, m in baselines.items():
            t = time.perf_counter()
            for user, lst in zip(users, m.recommend(users, k, [seen[u] for u in users])):
                published[name][user] = [i for i, _ in lst[:k]]
            scores[name].seconds += time.perf_counter() - t

    def learn_moment() -> None:
        for name, m in baselines.items():
            t = time.perf_counter()
            m.learn(moment)
            scores[name].seconds += time.perf_counter() - t
        publish(list(dict.fromkeys(ev.user_id for ev in moment)))
        moment.clear()

    publish(sorted({ev.user_id for ev in test if ev.user_id in seen}))
    restart = -1 if restart_at is None else int(len(test) * restart_at)
    for n, ev in enumerate(tqdm(test, desc="prequential", unit="ev", disable=not progress, mininterval=1.0)):
        if n == restart:
            for fleet in fleets.values():
                fleet.restart()
        if moment and ev.time - moment[0].time > window_s:
            learn_moment()
        s = seen.get(ev.user_id)
        if s and ev.item_id not in s:
            purchase = ev.type is EventType.PURCHASE
            for name, m in models.items():
                t = time.perf_counter()
                if isinstance(m, ServedFleet):
                    m.advance(ev.time)  # batches whose window passed before this event are out
                    ranked = [i for i, _ in m.served(ev.user_id)[:k]]
                else:
                    ranked = published[name].get(ev.user_id, [])
                scores[name].seconds += time.perf_counter() - t
                scores[name].add(hit_rank(ranked, ev.item_id), purchase, ranked)
        moment.append(ev)
        for name, fleet in fleets.items():
            t = time.perf_counter()
            fleet.arrive((ev,))
            scores[name].seconds += time.perf_counter() - t
        if s is None:
            seen[ev.user_id] = {ev.item_id}
        else:
            s.add(ev.item_id)
    learn_moment()


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
    deployment: Deployment | None = None,
) -> dict[str, Any]:
    """Run the test-then-learn protocol; returns the JSON-ready report.

    ``deployment``: how the served model (``served``) is deployed and so replayed
    (default: one worker with the worker's batching, ``Deployment()``).
    """
    if k < 1:
        raise ConfigError(f"k={k} must be >= 1")
    if not 0 < train_fraction < 1:
        raise ConfigError(f"train_fraction={train_fraction} must be between 0 and 1")
    models = list(dict.fromkeys(ALIASES.get(m, m) for m in models))
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
    dep = deployment or Deployment()
    ctx = _Context(train, model, foldin or FoldInConfig(), device, dep, k)
    built: dict[str, BaseRecommender | ServedFleet] = {}
    for name in models:
        t = time.perf_counter()
        built[name] = MODELS[name](ctx)
        log.info("model %s ready in %.1fs", name, time.perf_counter() - t)
    scores = {name: _Score() for name in built}

    _score_stream(train, test, built, scores, k, progress, dep.restart_at, dep.moment_s)

    catalog = _Catalog.of(train, test)
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
        "served_as": dep.describe(),
        "deployment": {"workers": dep.workers, "partitions": dep.partitions, "batch": dep.batch,
                       "batch_within_s": dep.within_s if math.isfinite(dep.within_s) else "inf", "restart_at": dep.restart_at,
                       "shared": dep.shared},
        "models": {name: sc.report(len(test), catalog) for name, sc in scores.items()},
    }
    fleet = built.get("served")
    if isinstance(fleet, ServedFleet) and fleet.batches:
        fleet.flush()
        report["mean_batch"] = round((len(train) + len(test)) / fleet.batches, 2)
        if fleet.deltas:
            report["delta_bytes_per_event"] = round(fleet.delta_bytes / (len(train) + len(test)), 1)
    if "served" in scores:
        inc = report["models"]["served"]
        report["served_vs"] = {
            name: {
                metric: (round(inc[metric] / r[metric] - 1.0, 4) if r[metric] else None)
                for metric in ("hr", "ndcg")
            }
            for name, r in report["models"].items()
            if name != "served"
        }
    return report


class FactorsOnly(BaseRecommender):
    """The version's own part of the served model: fold-in of the user's history and a
    nearest-item search, nothing learned online (the gate's check of the factors)."""

    def __init__(self, rec: ServedModel) -> None:
        self.rec = rec
        self.histories: dict[str, UserHistory] = {}

    def fit(self, events: Sequence[Event]) -> None:
        self.learn(events)

    def learn(self, events: Sequence[Event]) -> None:
        weights, cfg = self.rec.model.config.weights, self.rec.foldin_config
        for ev in events:
            h = self.histories.get(ev.user_id)
            if h is None:
                h = self.histories[ev.user_id] = UserHistory(ev.user_id)
            h.add(ev, weights, cfg)

    def recommend(
        self, users: Sequence[str], k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[Ranked]:
        hs = [self.histories.get(u) or UserHistory(u) for u in users]
        ex = exclude if exclude is not None else [h.exclude() for h in hs]
        return self.rec.index.search(self.rec.embed(hs), k, list(ex))


def paired_z(new_hits: Sequence[bool], old_hits: Sequence[bool]) -> tuple[int, int, float]:
    """(points only the old model hit, points only the new one hit, z): the one-sided sign
    test of "the new model is worse" on the same evaluation points (McNemar)."""
    only_old = sum(o and not n for n, o in zip(new_hits, old_hits))
    only_new = sum(n and not o for n, o in zip(new_hits, old_hits))
    z = (only_old - only_new) / math.sqrt(only_old + only_new) if only_old + only_new else 0.0
    return only_old, only_new, z


GATE_Z = 1.96
"""The gate refuses a version whose paired z (``paired_z``) exceeds this on either of its two
comparisons: one-sided 2.5% each, so an equal version is refused at most 5% of the time."""


def compare_on_holdout(
    new: ALSModel,
    serving: ALSModel,
    warm: Sequence[Event],
    holdout: Sequence[Event],
    *,
    k: int = 20,
    foldin: FoldInConfig | None = None,
    device: str = "auto",
    progress: bool = False,
    deployment: Deployment | None = None,
) -> dict[str, Any]:
    """Is ``new`` worse than ``serving`` on the held-out events? The trainer's gate.

    Each version is scored two ways, prequentially (HR@k, NDCG@k) on the same points,
    each event against the list its user was last published: the served model as the worker
    serves it (``ServedFleet`` with the worker's batching, ``deployment``), its online state
    first warmed on ``warm`` (the events just before the holdout), and by its factors alone
    (fold-in and nearest items, published per moment as ``evaluate`` does). ``promoted`` is
    False when the new version is worse either way by a paired sign test (``GATE_Z``); equal
    within noise is not worse.
    """
    if not holdout:
        raise BadInputError("no held-out events to compare the models on")
    warm = sorted(warm, key=lambda e: e.time)
    test = sorted(holdout, key=lambda e: e.time)
    cfg = foldin or FoldInConfig()
    dep = deployment or Deployment()
    built: dict[str, BaseRecommender | ServedFleet] = {}
    for name, m in (("new", new), ("serving", serving)):
        fleet = ServedFleet(lambda m=m: ServedModel(m, cfg, device=device), dep, k)  # type: ignore[misc]
        fleet.arrive(warm)
        fleet.flush()
        built[name] = fleet
        factors = FactorsOnly(ServedModel(m, cfg, device=device))
        factors.fit(warm)
        built[f"{name}_factors"] = factors
    scores = {name: _Score(per_point=[]) for name in built}
    _score_stream(warm, test, built, scores, k, progress, window_s=dep.moment_s)
    out: dict[str, Any] = {"k": k, "points": scores["new"].points, "z_limit": GATE_Z}
    for name, sc in scores.items():
        r = sc.report(len(test))
        out[name] = {"model_version": (new if name.startswith("new") else serving).version,
                     "hr": r["hr"], "ndcg": r["ndcg"]}
    worse = []
    for path in ("", "_factors"):
        only_old, only_new, z = paired_z(scores["new" + path].per_point or [],
                                           scores["serving" + path].per_point or [])
        out["served" if not path else "factors"] = {"only_serving_hit": only_old, "only_new_hit": only_new,
                                                    "z": round(z, 3)}
        if z > GATE_Z:
            worse.append("served" if not path else "factors alone")
    out["promoted"] = not worse
    out["why"] = (f"worse than serving {serving.version} ({', '.join(worse)})" if worse else
                  f"not worse than serving {serving.version}") + (
        f": HR@{k} served {out['new']['hr']} vs {out['serving']['hr']}, "
        f"factors alone {out['new_factors']['hr']} vs {out['serving_factors']['hr']} on {out['points']} points")
    return out

"""Speed of the model core on one synthetic shop log, against benfred/implicit.

    python benchmarks/model_core_speed.py [--items 100000] [--factors 64] [--json OUT]

Measured in one run on the same data: iALS training time (ours vs implicit);
user fold-ins/s, exact FAISS-layer searches/s, fold-in + top-20/s (what implicit's
recalculate + recommend does) and the served model's whole pass/s (``ServedModel.recommend``:
every candidate source, a fold-in search of 30 and the ranker) at B = 1, 64, 1024 on CPU
(and CUDA when torch sees one); implicit's batched
``recommend(..., recalculate_user=True, N=20)`` at the same batch sizes; and
what an approximate index (HNSW, IVF) adds at B = 1024, with its recall@20.
Figures go to benchmarks/results/model_core_speed.json unless --json says otherwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model_core.als import train_als
from model_core.config import ALSConfig, FoldInConfig
from model_core.device import cuda_available
from model_core.index import IndexConfig, ItemIndex
from model_core.offline.synth import SynthConfig, generate_events
from model_core.served.model import ServedModel
from model_core.state import UserHistory

BATCHES = (1, 64, 1024)
K = 20


def rate(fn: Callable[[], object], per_call: int, min_seconds: float = 1.0, repeats: int = 3) -> float:
    """Items per second: median over ``repeats`` timed loops of at least ``min_seconds``."""
    fn()  # warm-up
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds / repeats:
                break
        rates.append(n * per_call / elapsed)
    return round(statistics.median(rates), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000, help="catalogue size (default 100000)")
    ap.add_argument("--factors", type=int, default=64, help="embedding size (default 64)")
    ap.add_argument("--users", type=int, default=None, help="users in the log (default = items)")
    ap.add_argument("--events", type=int, default=None, help="events in the log (default 10 x items)")
    ap.add_argument("--json", default="benchmarks/results/model_core_speed.json", help="output JSON path")
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default 1 s)")
    args = ap.parse_args(argv)

    users = args.users or args.items
    n_events = args.events or 10 * args.items
    synth = SynthConfig(users=users, items=args.items, events=n_events, clusters=max(20, args.items // 500))
    t = time.perf_counter()
    events = list(generate_events(synth))
    print(f"log: {len(events)} events, {users} users, {args.items} items ({time.perf_counter() - t:.1f}s)",
          file=sys.stderr)
    cfg = ALSConfig(factors=args.factors, iterations=15)
    out: dict = {"items": args.items, "factors": args.factors, "events": len(events), "k": K, "indexed_items": None,
                 "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()}}

    # -- training: ours vs implicit on the same cells and hyper-parameters ------------------
    model = train_als(events, cfg, device="cpu")
    ours_train = model.metadata["train_seconds"]  # the solve only, as for implicit below
    out["indexed_items"] = len(model.item_ids)  # catalogue items that occur in the log
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    item_row = {i: r for r, i in enumerate(model.item_ids)}
    user_row = {u: r for r, u in enumerate(model.user_ids)}
    cells: dict[tuple[int, int], float] = {}
    for ev in events:
        key = (user_row[ev.user_id], item_row[ev.item_id])
        cells[key] = cells.get(key, 0.0) + cfg.weights.of(ev)
    rows = np.fromiter((u for u, _ in cells), np.int32, len(cells))
    cols = np.fromiter((i for _, i in cells), np.int32, len(cells))
    conf = 1.0 + cfg.alpha * np.fromiter(cells.values(), np.float32, len(cells))
    matrix = sp.csr_matrix((conf, (rows, cols)), shape=(len(user_row), len(item_row)))
    imp = AlternatingLeastSquares(factors=cfg.factors, regularization=cfg.regularization, alpha=1.0,
                                  iterations=cfg.iterations, random_state=0)
    with threadpool_limits(1, "blas"):  # implicit's own advice for its CPU solver
        t = time.perf_counter()
        imp.fit(matrix, show_progress=False)
        implicit_train = time.perf_counter() - t
    out["training"] = {"cells": len(cells), "iterations": cfg.iterations,
                       "freshrec_seconds": round(ours_train, 2), "implicit_seconds": round(implicit_train, 2),
                       "speedup_vs_implicit": round(implicit_train / ours_train, 2)}
    print(f"training: freshrec {ours_train:.1f}s, implicit {implicit_train:.1f}s", file=sys.stderr)

    # -- histories of the most recent users, as the worker would hold them -----------------
    foldin = FoldInConfig()
    histories: dict[str, UserHistory] = {}
    for ev in events:
        h = histories.get(ev.user_id) or histories.setdefault(ev.user_id, UserHistory(ev.user_id))
        h.add(ev, cfg.weights, foldin)
    sample = list(histories.values())[-max(BATCHES) * 4:]
    batches = {b: [sample[i: i + b] for i in range(0, len(sample) - b + 1, b)] for b in BATCHES}
    cursor = {b: 0 for b in BATCHES}

    def next_batch(b: int) -> list[UserHistory]:
        cursor[b] = (cursor[b] + 1) % len(batches[b])
        return batches[b][cursor[b]]

    out["freshrec"] = {"cpu": None, "cuda": None}
    for device in ("cpu", "cuda"):
        if device == "cuda" and not cuda_available():
            continue
        rec = ServedModel(model, foldin, device=device)
        per: dict[str, dict[str, float]] = {}
        for b in BATCHES:
            vecs = {id(h): v for h, v in zip(sample, rec.embed(sample))}
            excl = {id(h): h.exclude() for h in sample}

            def search(b: int = b) -> None:
                hs = next_batch(b)
                rec.index.search(np.stack([vecs[id(h)] for h in hs]), K, [excl[id(h)] for h in hs])

            def foldin_search(b: int = b) -> None:  # what implicit's recalculate + recommend does
                hs = next_batch(b)
                rec.index.search(rec.embed(hs), K, [h.exclude() for h in hs])

            per[str(b)] = {
                "foldin_per_s": rate(lambda b=b: rec.embed(next_batch(b)), b, args.seconds),
                "search_per_s": rate(search, b, args.seconds),
                "foldin_search_per_s": rate(foldin_search, b, args.seconds),
                # the served model's whole pass: every candidate source, a fold-in search of 30, the ranker
                "served_pass_per_s": rate(lambda b=b: rec.recommend(next_batch(b), K), b, args.seconds),
            }
            print(f"{device} B={b}: {per[str(b)]}", file=sys.stderr)
        out["freshrec"][device] = per

    # -- implicit: batched recommend with recalculate_user=True -------------------------------
    user_items = matrix.tocsr()
    imp_rows = {b: [np.array([user_row[h.user_id] for h in batch]) for batch in batches[b]] for b in BATCHES}
    by_batch = {}
    with threadpool_limits(1, "blas"):
        for b in BATCHES:
            def run(b: int = b) -> None:
                cursor[b] = (cursor[b] + 1) % len(imp_rows[b])
                ids = imp_rows[b][cursor[b]]
                imp.recommend(ids, user_items[ids], N=K, recalculate_user=True)
            by_batch[str(b)] = rate(run, b, args.seconds)
    out["implicit"] = {"recalc_recommend_per_s": by_batch["1024"], "by_batch": by_batch}
    print(f"implicit recalc recommend: {by_batch}", file=sys.stderr)

    # -- what an approximate index adds at B=1024 ----------------------------------------------
    rec = ServedModel(model, foldin, device="cpu")
    q = rec.embed(batches[1024][0])
    exact = rec.index.search(q, K)
    ann = {}
    for kind in ("hnsw", "ivf", "ivf-sq8", "ivf-pq"):
        index = ItemIndex.build(model.item_ids, model.item_factors, IndexConfig(kind=kind), device="cpu")
        got = index.search(q, K)
        recall = np.mean([len({i for i, _ in g} & {i for i, _ in e}) / max(1, len(e)) for g, e in zip(got, exact)])
        ann[kind] = {"search_per_s_b1024": rate(lambda index=index: index.search(q, K), 1024, args.seconds),
                     "recall_at_20": round(float(recall), 4)}
    # share of (user, item) products the exact scan computes (internal diagnostic of the flat index)
    scored = rec.index._get_layout().search(q, K)[2]
    ann["flat"] = {"search_per_s_b1024": rate(lambda: rec.index.search(q, K), 1024, args.seconds),
                   "recall_at_20": 1.0, "scored_fraction": round(float(scored), 4)}
    out["ann"] = ann
    cpu = out["freshrec"]["cpu"]["1024"]
    out["ratio_foldin_search_vs_implicit_b1024"] = round(cpu["foldin_search_per_s"] / by_batch["1024"], 2)
    out["ratio_served_pass_vs_implicit_b1024"] = round(cpu["served_pass_per_s"] / by_batch["1024"], 2)
    print(f"ANN: {ann}", file=sys.stderr)
    print(f"fold-in + top-{K} at B=1024 (CPU, exact): {cpu['foldin_search_per_s']:.0f}/s = "
          f"{out['ratio_foldin_search_vs_implicit_b1024']}x implicit; the served model's whole pass "
          f"{cpu['served_pass_per_s']:.0f}/s = {out['ratio_served_pass_vs_implicit_b1024']}x", file=sys.stderr)

    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

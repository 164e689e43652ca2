"""cProfile of ServedModel.recommend at B=1024 on model_core_speed.py's data.

    python -m benchmarks._profile_recommend [--items 100000] [--factors 64] [--calls 10]
        [--cache /tmp/data.pkl]

Builds the same log, model and user histories as ``benchmarks/model_core_speed.py``
(``--cache``: keep them in a pickle for the next run), prints fold-ins/s, exact
top-20 searches/s and ``recommend`` (what that benchmark times as fold-in + top-20)
per second at B=1024, then the profile of ``--calls`` recommend calls, by
cumulative and by own time. ``docs/profile_model_core_speed.txt`` was made with it.
"""

from __future__ import annotations

import argparse
import cProfile
import pickle
import pstats
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model_core.als import ALSModel, train_als
from model_core.config import ALSConfig, FoldInConfig
from model_core.offline.synth import SynthConfig, generate_events
from model_core.served.model import ServedModel
from model_core.state import UserHistory

B, K = 1024, 20


def _data(items: int, factors: int, cache: str | None) -> tuple[ALSModel, list[UserHistory]]:
    if cache and Path(cache).exists():
        with open(cache, "rb") as f:
            return pickle.load(f)  # type: ignore[no-any-return]
    synth = SynthConfig(users=items, items=items, events=10 * items, clusters=max(20, items // 500))
    events = list(generate_events(synth))
    cfg = ALSConfig(factors=factors, iterations=15)
    model = train_als(events, cfg, device="cpu")
    foldin = FoldInConfig()
    histories: dict[str, UserHistory] = {}
    for ev in events:
        h = histories.get(ev.user_id) or histories.setdefault(ev.user_id, UserHistory(ev.user_id))
        h.add(ev, cfg.weights, foldin)
    sample = list(histories.values())[-4 * B:]  # the benchmark's users
    if cache:
        with open(cache, "wb") as f:
            pickle.dump((model, sample), f)
    return model, sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()
    model, sample = _data(args.items, args.factors, args.cache)
    batches = [sample[i:i + B] for i in range(0, len(sample) - B + 1, B)]
    rec = ServedModel(model, FoldInConfig(), device="cpu")
    rec.recommend(batches[0], K)  # warm-up: vocabulary, layout
    vecs = {id(h): v for h, v in zip(sample, rec.embed(sample))}
    excl = {id(h): h.exclude() for h in sample}

    def rate(fn: Callable[[list[UserHistory]], object]) -> float:
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            for i in range(args.calls):
                fn(batches[i % len(batches)])
            runs.append(args.calls * B / (time.perf_counter() - start))
        return sorted(runs)[1]

    print(f"B={B}: fold-ins {rate(rec.embed):.0f}/s, "
          f"top-{K} searches {rate(lambda hs: rec.index.search(np.stack([vecs[id(h)] for h in hs]), K, [excl[id(h)] for h in hs])):.0f}/s, "
          f"recommend {rate(lambda hs: rec.recommend(hs, K)):.0f}/s (median of 3 x {args.calls} calls)")
    prof = cProfile.Profile()
    prof.enable()
    for i in range(args.calls):
        rec.recommend(batches[i % len(batches)], K)
    prof.disable()
    for order, n in (("cumulative", 30), ("tottime", 25)):
        pstats.Stats(prof).strip_dirs().sort_stats(order).print_stats(n)


if __name__ == "__main__":
    main()

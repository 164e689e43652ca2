"""The served model's worker loop alone, comparable across commits.

    PYTHONPATH=<tree> python benchmarks/step_speed.py [--profile] [--json OUT]

Synthetic log (5k users, 3k items, 100k events, seed 7); iALS on the first half; the
first half replayed through ``ServedModel.apply`` and ``step`` in batches of 256
(warm-up), then 15k more events timed the same way. It uses only the calls every
commit since the served model v2 has (``model_core.online.OnlineRecommender`` before it moved), so running it with ``PYTHONPATH`` set to another
commit's worktree measures that commit on the same work (alternate them: this machine
varies by tens of per cent between runs). ``--profile`` prints cProfile's top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", action="store_true", help="print the top functions by own time")
    ap.add_argument("--json", default=None, help="write {ev_s, events} here")
    args = ap.parse_args(argv)

    from model_core.als import train_als
    from model_core.config import ALSConfig
    from model_core.offline.synth import SynthConfig, generate_events
    from model_core.state import UserHistory

    try:
        from model_core.served.model import ServedModel
    except ImportError:  # a commit before the served model moved to model_core/served/
        from model_core.online import OnlineRecommender as ServedModel  # type: ignore[no-redef]

    events = sorted(generate_events(SynthConfig(users=5000, items=3000, events=100_000, seed=7)), key=lambda e: e.time)
    half = len(events) // 2
    rec = ServedModel(train_als(events[:half], ALSConfig(), device="cpu"), device="cpu")
    histories: dict[str, UserHistory] = {}

    def run(start: int, stop: int) -> None:
        for i in range(start, stop, 256):
            batch = events[i : i + 256]
            touched = {}
            for ev in batch:
                h = histories.setdefault(ev.user_id, UserHistory(ev.user_id))
                if rec.apply(h, ev):
                    touched[ev.user_id] = h
            rec.step(batch, touched, 20)

    run(0, half)
    n = 15_000
    profiler = cProfile.Profile() if args.profile else None
    t = time.perf_counter()
    if profiler:
        profiler.enable()
    run(half, half + n)
    if profiler:
        profiler.disable()
    ev_s = n / (time.perf_counter() - t)
    print(f"step loop: {ev_s:,.0f} events/s ({sys.modules[ServedModel.__module__].__file__})")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    if args.json:
        Path(args.json).write_text(json.dumps({"ev_s": round(ev_s, 1), "events": n}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

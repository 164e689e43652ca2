"""What warm-starting a retrain from the serving version changes, in time and quality.

    python benchmarks/warm_start.py [--log FILE ...]   # writes benchmarks/results/warm_start.json

The trainer's situation: a serving version trained on the first 60% of a log (by
event time), a retrain on the first 80% (the same history plus what came since),
and the next 2% held out. The retrain runs cold (random start) and warm (known
users and items start from the serving version's factors) at several sweep
counts; each is scored on the held-out events with the trainer's own gate
(``compare_on_holdout``: served as the worker serves it, and by its factors
alone), against the cold 15-sweep default. Default log: synthetic (3k users,
1.5k items, 100k events); ``--log`` takes any log ``freshrec`` reads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from model_core.als import train_als
from model_core.config import ALSConfig
from model_core.offline.evaluate import compare_on_holdout
from model_core.offline.logs import read_events
from model_core.offline.synth import SynthConfig, generate_events

OUT = Path(__file__).parent / "results" / "warm_start.json"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", action="append", default=None, help="event log (default: synthetic)")
    ap.add_argument("--json", default=str(OUT), help=f"results file (default {OUT})")
    args = ap.parse_args(argv)
    if args.log:
        events = [e for path in args.log for e in read_events(path)]
        source = args.log
    else:
        events = list(generate_events(SynthConfig(users=3000, items=1500, events=100_000, seed=3)))
        source = "synthetic 3k users, 1.5k items, 100k events (seed 3)"
    events.sort(key=lambda e: e.time)
    n = len(events)
    old, new, hold = events[: int(n * 0.6)], events[: int(n * 0.8)], events[int(n * 0.8): int(n * 0.82)]
    serving = train_als(old, ALSConfig(), device="cpu")
    runs = {}
    for sweeps in (3, 5, 15):
        for warm in (False, True):
            t = time.perf_counter()
            model = train_als(new, ALSConfig(iterations=sweeps), device="cpu", warm_start=serving if warm else None)
            runs[(sweeps, warm)] = (model, time.perf_counter() - t)
    base, _ = runs[(15, False)]
    out = {"source": source, "events": n, "serving_events": len(old), "retrain_events": len(new),
           "held_out_events": len(hold), "runs": []}
    for (sweeps, warm), (model, seconds) in runs.items():
        gate = compare_on_holdout(model, base, new[-10000:], hold, device="cpu")
        row = {"sweeps": sweeps, "warm_start": warm, "train_s": round(seconds, 2),
               "hr_served": gate["new"]["hr"], "hr_factors": gate["new_factors"]["hr"],
               "default_hr_served": gate["serving"]["hr"], "default_hr_factors": gate["serving_factors"]["hr"],
               "points": gate["points"]}
        out["runs"].append(row)
        print(json.dumps(row))
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
